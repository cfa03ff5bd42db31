"""Does a Q/DQ graph follow the rules of TensorRT's explicit quantization (strongly typed network)?

Checked without TensorRT (which needs a GPU to parse): the rules TensorRT documents for ONNX
QuantizeLinear/DequantizeLinear in explicit-quantization mode, as they apply to INT8:

* INT8 only and symmetric: every zero point is an int8 constant equal to 0 (a QuantizeLinear
  without a zero point outputs uint8, which TensorRT does not take);
* scales are constant, finite and positive;
* activations are quantised per tensor (a scalar scale); per-channel scales only on constant
  weights, along the output-channel axis of the layer that reads them (Conv: axis 0,
  ConvTranspose: axis 1, MatMul: the last axis, Gemm: 0 with transB, else 1);
* biases stay float: no DequantizeLinear of int32 (ONNX Runtime's quantised bias) and none
  feeding a bias input;
* a QuantizeLinear is read only by DequantizeLinear, a DequantizeLinear reads a QuantizeLinear or
  an int8 weight constant, no blocked (``block_size``) or non-int8 (``output_dtype``) Q/DQ, opset
  >= 13 (per-axis Q/DQ);
* no dead Q/DQ nodes (left by a graph edit; :func:`diffvos.calibration.qdq_graph.prune`).

``--target tensorrt`` graphs must pass (calibrate refuses to write one that does not);
``--target cpu`` graphs (uint8 activations, int32 biases) fail it by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffvos.calibration.qdq_graph import producer_map, reader_map

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class QdqReport:
    quantize: int = 0
    dequantize: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            attr = next((a for a in n.attribute if a.name == "value"), None)
            if attr is not None:
                values[n.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _channel_axis(reader: Any, rank: int) -> int | None:
    """The output-channel axis of the weight input of ``reader`` (None: not a weight input)."""
    if reader.op_type == "Conv":
        return 0
    if reader.op_type == "ConvTranspose":
        return 1
    if reader.op_type == "MatMul":
        return rank - 1
    if reader.op_type == "Gemm":
        return 0 if _attr(reader, "transB", 0) else 1
    return None


def check_tensorrt(model: Any) -> QdqReport:
    """Every place where ``model`` breaks TensorRT's explicit-quantization rules (see the module)."""
    g = model.graph
    consts = _constants(g)
    readers, producers = reader_map(g), producer_map(g)
    outputs = {o.name for o in g.output}
    report = QdqReport()
    bad = report.violations
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset and opset < 13 and any(n.op_type in _QDQ for n in g.node):
        bad.append(f"opset {opset}: per-axis Q/DQ needs opset >= 13")
    for n in g.node:
        if n.op_type not in _QDQ:
            continue
        name = n.name or n.output[0]
        if n.op_type == "QuantizeLinear":
            report.quantize += 1
        else:
            report.dequantize += 1
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        zero = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None:
            bad.append(f"{name}: scale is not a constant")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            bad.append(f"{name}: scale must be finite and > 0 (min {float(np.min(scale)):g})")
        if zero is None and len(n.input) > 2 and n.input[2]:
            bad.append(f"{name}: zero point is not a constant")
        elif zero is None and n.op_type == "QuantizeLinear" and _attr(n, "output_dtype", 0) == 0:
            bad.append(f"{name}: no zero point, so the output type is uint8 (TensorRT takes int8)")
        elif zero is not None and zero.dtype != np.int8:
            bad.append(f"{name}: zero point is {zero.dtype}, TensorRT needs int8")
        elif zero is not None and np.any(zero != 0):
            bad.append(f"{name}: zero point {int(np.max(np.abs(zero)))} != 0 (TensorRT is symmetric)")
        if _attr(n, "block_size", 0):
            bad.append(f"{name}: blocked quantisation (block_size) is not INT8 Q/DQ")
        out_dtype = _attr(n, "output_dtype", 0)
        if out_dtype not in (0, 3):  # 3: TensorProto.INT8
            bad.append(f"{name}: output_dtype {out_dtype} is not int8")
        reads = readers.get(n.output[0], [])
        if not reads and n.output[0] not in outputs:
            bad.append(f"{name}: dead {n.op_type} (nothing reads it; prune the graph before TensorRT)")
        source = n.input[0]
        is_weight = source in consts
        if n.op_type == "DequantizeLinear":
            src = consts.get(source)
            if src is not None and src.dtype != np.int8:
                bad.append(f"{name}: dequantises a {src.dtype} constant (TensorRT: int8; biases stay float)")
            prod = producers.get(source)
            if src is None and (prod is None or prod.op_type != "QuantizeLinear"):
                bad.append(f"{name}: reads {source!r}, which is neither a QuantizeLinear nor an int8 constant")
            for r in reads:
                if r.op_type in ("Conv", "ConvTranspose", "Gemm") and len(r.input) > 2 and r.input[2] == n.output[0]:
                    bad.append(f"{name}: feeds the bias of {r.name} (TensorRT biases stay float)")
        else:
            wrong = sorted({r.op_type for r in reads if r.op_type != "DequantizeLinear"})
            if wrong:
                bad.append(f"{name}: read by {', '.join(wrong)} (a QuantizeLinear must feed DequantizeLinear only)")
        if scale is not None and scale.size > 1:
            if not is_weight:
                bad.append(f"{name}: per-channel scales on an activation (TensorRT: per tensor)")
            else:
                axis = _attr(n, "axis", 1)
                rank = consts[source].ndim
                axis = axis + rank if axis < 0 else axis
                users = readers.get(n.output[0], []) if n.op_type == "DequantizeLinear" else [
                    r2 for dq in reads for r2 in readers.get(dq.output[0], [])]
                for u in users:
                    want = _channel_axis(u, rank)
                    if want is None:
                        bad.append(f"{name}: per-channel weights read by {u.op_type} {u.name}")
                    elif axis != want:
                        bad.append(f"{name}: per-channel axis {axis}, {u.op_type} needs the output-channel axis {want}")
    return report
