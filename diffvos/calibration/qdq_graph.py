"""Facts about and edits of Q/DQ graphs: which compute nodes run in INT8, their FLOPs, keeping
nodes in float without re-running the quantiser, and pruning what an edit leaves unused.

Why graph edits: the mixed-precision search tries many "keep these k nodes in float" variants of
one quantised graph. Re-running ONNX Runtime's quantiser with ``nodes_to_exclude`` gives the same
graph (checked bit for bit in the study and in tests/test_int8.py) but costs seconds per variant;
bypassing the nodes' DequantizeLinear inputs costs milliseconds.

Two things the edit must know about ONNX Runtime's Q/DQ layout:

* the Q/DQ of an activation may sit above data-movement ops (attention: Reshape/Split/Transpose
  between the DequantizeLinear and the MatMul), so the edit follows them back to the DQ;
* one Q/DQ pair is shared by every reader of a tensor (GroupNorm reshapes and residual Adds read
  the quantised copy too), so a pair is dropped for all its readers once no quantised compute
  node reads it any more. Otherwise keeping every node float would not give the FP32 graph back.

A bypassed Q/DQ pair is left without readers: :func:`prune` removes it (TensorRT should never see
dead Q/DQ nodes; :mod:`diffvos.calibration.qdq_check` refuses them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

#: compute ops the quantiser may run in INT8 (their weight/activation inputs get Q/DQ)
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: ops that only move data: a Q/DQ may sit on either side of them
MOVEMENT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Flatten",
                          "Gather", "Expand", "Identity"})
_MAX_HOPS = 8  # data-movement ops followed between a DQ and its compute node


def load(path: Any) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def graph_sha256(model: Any) -> str:
    """sha256 of the serialized graph: equal hashes mean identical graphs (candidate deduplication)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def name_nodes(model: Any) -> Any:
    """Give every unnamed node a unique name (in place): nodes are kept float by name, and
    exporters leave some nodes (the stream-axis reshape, for one) unnamed."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def producer_map(graph: Any) -> dict[str, Any]:
    """Tensor name -> the node that outputs it."""
    return {o: n for n in graph.node for o in n.output}


def reader_map(graph: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes that read it, in graph order."""
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def _constants(graph: Any) -> set[str]:
    return {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}


def _trace_to_dq(node: Any, index: int, producers: dict[str, Any]) -> tuple[Any, int, Any | None]:
    """(user, input index, DequantizeLinear or None): follow ``node.input[index]`` back through
    data-movement ops to the DQ that feeds it; ``user`` is the node whose input reads the DQ."""
    user, k, name = node, index, node.input[index]
    for _ in range(_MAX_HOPS):
        prod = producers.get(name)
        if prod is None or prod.op_type not in MOVEMENT_OPS:
            break
        user, k, name = prod, 0, prod.input[0]
    prod = producers.get(name)
    return user, k, (prod if prod is not None and prod.op_type == "DequantizeLinear" else None)


def _quantised_inputs(node: Any) -> list[int]:
    """Input positions of a compute node that the quantiser covers (not the bias)."""
    return [0, 1] if node.op_type in COMPUTE_OPS else []


def quantised_nodes(model: Any) -> set[str]:
    """Names of compute nodes whose inputs (data and weight) both come from DequantizeLinear."""
    g = model.graph
    producers = producer_map(g)
    out = set()
    for n in g.node:
        ks = [k for k in _quantised_inputs(n) if k < len(n.input) and n.input[k]]
        if ks and all(_trace_to_dq(n, k, producers)[2] is not None for k in ks):
            out.add(n.name)
    return out


def keep_float(qdq_model: Any, float_model: Any, nodes: Iterable[str]) -> Any:
    """A copy of ``qdq_model`` in which ``nodes`` read float inputs: their activation Q/DQ pairs
    are bypassed and their weights restored from ``float_model`` (the graph it was quantised
    from). Equal to quantising with these nodes excluded; call :func:`prune` afterwards."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(qdq_model)
    g = m.graph
    want = set(nodes)
    unknown = want - {n.name for n in g.node}
    if unknown:
        raise ValueError(f"no node named {', '.join(sorted(unknown))} in the graph")
    originals = {i.name: i for i in float_model.graph.initializer}
    producers = producer_map(g)
    have = {i.name for i in g.initializer}
    for n in g.node:
        if n.name not in want:
            continue
        for k0 in _quantised_inputs(n):
            if k0 >= len(n.input) or not n.input[k0]:
                continue
            user, k, dq = _trace_to_dq(n, k0, producers)
            if dq is None:
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation (or a weight's Q/DQ pair)
                user.input[k] = q.input[0]
            else:  # an int8 weight initializer: the float original comes back
                base = dq.input[0][: -len("_quantized")] if dq.input[0].endswith("_quantized") else dq.input[0]
                if base not in originals:
                    raise ValueError(f"float weight {base!r} of node {n.name} is not in the float graph")
                if base not in have:
                    g.initializer.append(originals[base])
                    have.add(base)
                user.input[k] = base
    _drop_unread_pairs(g, want)
    return m


def _drop_unread_pairs(g: Any, kept: set[str]) -> None:
    """Bypass every activation Q/DQ pair that no INT8 compute node reads any more."""
    producers = producer_map(g)
    readers = reader_map(g)
    constants = _constants(g)

    def feeds_quantised(tensor: str, depth: int = 0) -> bool:
        for r in readers.get(tensor, []):
            if r.op_type in COMPUTE_OPS and r.name not in kept:
                return True
            if r.op_type in MOVEMENT_OPS and depth < _MAX_HOPS and any(feeds_quantised(o, depth + 1) for o in r.output):
                return True
        return False

    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in constants:
            continue
        if not feeds_quantised(dq.output[0]):
            for r in readers.get(dq.output[0], []):
                for k, name in enumerate(r.input):
                    if name == dq.output[0]:
                        r.input[k] = q.input[0]


def prune(model: Any) -> tuple[Any, int]:
    """Remove the nodes nothing reads (the Q/DQ pairs an edit bypassed) and the initializers and
    value infos left unused, in place; returns (model, nodes removed)."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep: list[Any] = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output if o):
            keep.append(n)
            needed.update(i for i in n.input if i)
    removed = len(g.node) - len(keep)
    if removed:
        keep.reverse()
        del g.node[:]
        g.node.extend(keep)
    unused = [i for i in g.initializer if i.name not in needed]
    for init in unused:
        g.initializer.remove(init)
    produced = {o for n in g.node for o in n.output}
    stale = [v for v in g.value_info if v.name not in needed and v.name not in produced]
    for v in stale:
        g.value_info.remove(v)
    return model, removed


def derive(qdq_model: Any, float_model: Any, nodes: Sequence[str]) -> Any:
    """``keep_float`` + ``prune``: the graph a mixed-precision candidate really is."""
    return prune(keep_float(qdq_model, float_model, nodes))[0]


# --- FLOPs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCost:
    """One compute node of the float graph: what it is and what it costs per graph call."""

    node: str
    op: str
    kind: str  # conv | depthwise | pointwise | matmul | gemm | convtranspose
    flops: int  # multiply-add counts 2


def _static_shapes(model: Any, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """Every tensor's shape for a graph input of ``input_shape``: ONNX Runtime's symbolic shape
    inference first (it sees through the Reshape chains ADM has), ONNX's own otherwise."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, size in zip(dims, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(size)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        m = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    except Exception:  # noqa: BLE001 - any failure of the symbolic pass: fall back to ONNX's
        m = shape_inference.infer_shapes(m)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def node_costs(model: Any, input_shape: Sequence[int]) -> list[NodeCost]:
    """FLOPs of every Conv / ConvTranspose / MatMul / Gemm of ``model`` (float), in graph order;
    0 where a shape stays unknown."""
    shapes = _static_shapes(model, input_shape)
    rows = []
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        out = shapes.get(n.output[0]) or []
        known = bool(out) and all(out)
        if n.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(n.input[1]) or []
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            # weights [Cout, Cin/g, k..] (Conv) or [Cin, Cout/g, k..] (ConvTranspose): one multiply-add
            # per weight per output (Conv) or input (ConvTranspose) position
            positions = out if n.op_type == "Conv" else (shapes.get(n.input[0]) or [])
            macs = int(np.prod(w)) * int(np.prod(positions[2:])) * positions[0] \
                if w and positions and all(positions) else 0
            if n.op_type == "Conv" and group > 1 and len(w) > 1 and w[1] == 1:
                kind = "depthwise"
            elif n.op_type == "Conv" and w and all(s == 1 for s in w[2:]):
                kind = "pointwise"
            else:
                kind = n.op_type.lower()
        else:
            a = shapes.get(n.input[0]) or []
            reduce = a[-1] if a else 0
            if n.op_type == "Gemm" and any(x.name == "transA" and x.i for x in n.attribute) and len(a) == 2:
                reduce = a[0]
            macs = int(np.prod(out)) * reduce if known else 0
            kind = n.op_type.lower()
        rows.append(NodeCost(n.name, n.op_type, kind, 2 * int(macs)))
    return rows


def int8_flop_fraction(costs: Sequence[NodeCost], quantised: set[str]) -> float | None:
    """Share of the compute nodes' FLOPs that run in INT8 (None when no FLOPs are known)."""
    total = sum(c.flops for c in costs)
    if not total:
        return None
    return sum(c.flops for c in costs if c.node in quantised) / total
