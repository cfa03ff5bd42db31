"""A small helper for the ONNX graphs the runtime builds itself (propagation, input preparation,
device copies): unique names, deduplicated constants, one node per call.

The graphs are built at session start from static geometry, so they are written with
``onnx.helper`` (no exporter, no torch). ``onnx`` is imported only when a graph is built: the CLI
and a runtime that never builds one do not pay for it. Opset 17 and IR version 8: ONNX Runtime
1.18+ and the TensorRT 10 parser read them (onnx 1.23 writes IR 14 by default, which ONNX Runtime
1.31 rejects).
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8


def onnx_type(dtype: Any) -> int:
    """The ONNX element type of a numpy dtype."""
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class GraphBuilder:
    """Nodes and initializers of one graph; ``op`` returns the output name(s)."""

    def __init__(self) -> None:
        import onnx
        from onnx import helper, numpy_helper

        self._onnx, self._helper, self._numpy_helper = onnx, helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, value: Any, dtype: Any = None, base: str = "c") -> str:
        """An initializer; small ones with equal values are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.name(base)
        self.initializers.append(self._numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def i64(self, value: Any) -> str:
        return self.const(np.asarray(value, np.int64))

    def i32(self, value: Any) -> str:
        return self.const(np.asarray(value, np.int32))

    def f32(self, value: Any) -> str:
        return self.const(np.asarray(value, np.float32))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, base: str | None = None,
           outputs: list[str] | None = None, **attrs: Any) -> Any:
        outs = outputs or [self.name(base or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self._helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def cast(self, x: str, dtype: Any, base: str | None = None, outputs: list[str] | None = None) -> str:
        """``Cast`` of ``x`` to the numpy ``dtype``."""
        return self.op("Cast", [x], base=base, outputs=outputs, to=onnx_type(dtype))

    def input(self, name: str, dtype: Any, shape: list[int | str] | None) -> str:
        self.inputs.append(self._helper.make_tensor_value_info(name, onnx_type(dtype), shape))
        return name

    def output(self, name: str, dtype: Any, shape: list[int | str] | None) -> str:
        self.outputs.append(self._helper.make_tensor_value_info(name, onnx_type(dtype), shape))
        return name

    def model(self, graph_name: str, check: bool = True) -> Any:
        """The ``onnx.ModelProto``, checked (``check=False``: inputs of any rank, which the checker
        cannot state)."""
        h = self._helper
        graph = h.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                             producer_name="diffvos")
        if check:
            self._onnx.checker.check_model(model)
        return model


def copy_model(dtype: Any) -> Any:
    """Identity on a tensor of any shape: a device copy between buffers bound by address (EP-agnostic:
    the same call copies host memory on the CPU and device memory on a GPU)."""
    g = GraphBuilder()
    g.input("x", dtype, None)
    g.op("Identity", ["x"], outputs=["y"])
    g.output("y", dtype, None)
    return g.model("diffvos_copy", check=False)
