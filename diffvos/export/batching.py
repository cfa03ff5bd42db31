"""The feature graph's stream axis: several streams' draws in one call (the batch axis).

Every feature graph ends with the mean over its E noise draws (``ReduceMean`` over axis 0, keep
dims): x_t [E,Cin,H,W] -> [1,C,h,w]. For several streams in one call that tail becomes a
reshape to [B,E,C,h,w] and a mean over axis 1, so x_t [B*E,Cin,H,W] -> features [B,C,h,w], each
stream the mean over its own draws. The rewrite is done on the ONNX graph, after the exporter
(so it covers every backbone, present and future, whose module ends with that mean), and is
verified against PyTorch stream by stream. Needs ``onnx``; torch only for the verification.
"""

from __future__ import annotations

from typing import Any

from diffvos.errors import ExportError

DRAWS_AXIS = "draws"  # input dimension 0: streams x E
STREAMS_AXIS = "streams"  # output dimension 0
VERIFY_STREAMS = 2  # streams in the export's verification input


def _axes(node: Any, model: Any) -> list[int] | None:
    """The axes of a ReduceMean node (an attribute before opset 18, an input from 18 on)."""
    from onnx import helper, numpy_helper

    for attr in node.attribute:
        if attr.name == "axes":
            return list(helper.get_attribute_value(attr))
    if len(node.input) > 1:
        for init in model.graph.initializer:
            if init.name == node.input[1]:
                return [int(a) for a in numpy_helper.to_array(init).reshape(-1)]
        for other in model.graph.node:
            if other.op_type == "Constant" and node.input[1] in other.output:
                return [int(a) for a in numpy_helper.to_array(other.attribute[0].t).reshape(-1)]
    return None


def _keepdims(node: Any) -> int:
    from onnx import helper

    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "keepdims"), 1)


def batch_streams(model: Any, ensemble: int) -> Any:
    """Rewrite a feature graph's final draw mean so that it averages per stream (in place).

    ``model``: an ``onnx.ModelProto`` with one input and one output, whose output is produced by
    ``ReduceMean(axes=[0], keepdims=1)``. Raises ExportError when the graph does not end so.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"a feature graph has one input and one output, this one has {len(graph.input)} "
                          f"and {len(graph.output)}")
    out_name = graph.output[0].name
    tail = next((n for n in graph.node if out_name in n.output), None)
    if tail is None or tail.op_type != "ReduceMean" or _axes(tail, model) != [0] or _keepdims(tail) != 1:
        found = "nothing" if tail is None else f"{tail.op_type} {_axes(tail, model) if tail.op_type == 'ReduceMean' else ''}"
        raise ExportError("cannot give the feature graph a stream axis: its output should be the mean over the "
                          f"draws (ReduceMean over axis 0), found {found}; export with --max-streams 1")
    per_draw = tail.input[0]
    index = list(graph.node).index(tail)
    graph.node.remove(tail)
    prefix = "diffvos_streams_"
    new_nodes = [
        helper.make_node("Shape", [per_draw], [prefix + "chw"], start=1),
        helper.make_node("Concat", [prefix + "be", prefix + "chw"], [prefix + "shape"], axis=0),
        helper.make_node("Reshape", [per_draw, prefix + "shape"], [prefix + "by_stream"]),
        helper.make_node("ReduceMean", [prefix + "by_stream"], [out_name], axes=[1], keepdims=0),
    ]
    graph.initializer.append(helper.make_tensor(prefix + "be", TensorProto.INT64, [2], [-1, int(ensemble)]))
    for offset, node in enumerate(new_nodes):
        graph.node.insert(index + offset, node)
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = DRAWS_AXIS
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = STREAMS_AXIS
    keep = [v for v in graph.value_info if v.name != out_name]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return model


def stream_example(example: Any, streams: int = VERIFY_STREAMS) -> Any:
    """A verification input of ``streams`` streams: the example, then mirrored copies of it
    (distinct content per stream, so a mix-up between streams shows)."""
    import torch

    copies = [example if i % 2 == 0 else torch.flip(example, dims=[-1]) for i in range(streams)]
    return torch.cat(copies, dim=0)


def per_stream_reference(module: Any, ensemble: int) -> Any:
    """A torch module computing the batched graph's output the slow way: the original module
    once per stream, outputs stacked. For verification only (it loops in Python)."""
    import torch

    class PerStream(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.inner(x[i : i + ensemble]) for i in range(0, x.shape[0], ensemble)], dim=0)

    return PerStream()

