"""Explicit INT8 (Q/DQ) quantisation of a feature graph with ONNX Runtime's quantisation tooling.

The activation ranges are collected once (``calibrate_ranges``), kept in ONNX Runtime's JSON
range cache, and reused for every candidate configuration (``quantize_graph``), so choosing what
to quantise by measurement costs one calibration pass, not one per candidate.

Two targets:

* ``tensorrt`` (default): symmetric int8 activations and weights (zero point 0), weights per
  output channel (axis 0), float biases, and Q/DQ on the *inputs* of the quantised ops only
  (``OpTypesToExcludeOutputQuantization``): TensorRT's recommended placement, the one NVIDIA's
  ModelOpt emits. ONNX Runtime's default also quantises every op's output, which quantises each
  activation twice with different scales (the study behind issue 14 measured the stem alone at
  cosine 0.982 that way, 0.999 with inputs only). ONNX Runtime runs these graphs too (for the
  accuracy checks), but slower than FP32 on its CPU provider: INT8 speed comes from TensorRT.
* ``cpu``: uint8 activations, int8 weights, int32 biases, Q/DQ around inputs and outputs: the
  pattern ONNX Runtime fuses into its CPU integer kernels; not loadable as a TensorRT network.

Why not NVIDIA's ModelOpt (``nvidia-modelopt``): measured on MobileNetV2 it produces the same
numbers as ``quantize_static`` with these options (it is that call underneath for INT8 Conv
graphs, plus Q/DQ on residual Add inputs) while adding about 2 GB of dependencies (torch,
onnxruntime-gpu, cupy); see README "Precision and TensorRT".
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from diffvos.calibration.options import METHODS, TARGETS, QuantConfig


def candidate_configs(target: str = "tensorrt", exclude: Sequence[str] = ()) -> list[QuantConfig]:
    """The op-type sets measured by default, most INT8 first (identical graphs are dropped by
    :func:`distinct`: a graph without MatMul gives the same graph for both). Which nodes stay
    float is left to the mixed-precision search, not to a fixed rule (keep-first-last kept the
    wrong convs on MobileNetV2: its sensitive ones are the first two depthwise convs).
    Quantising every op type (``--ops all``) is left out: measured on ADM-256 it ran 0.44x FP32
    at cosine 0.81 (Q/DQ around every normalisation and activation)."""
    exclude = tuple(exclude)
    return [
        QuantConfig("conv+matmul", ("Conv", "MatMul"), exclude=exclude, keep_first_last=False, target=target),
        QuantConfig("conv", ("Conv",), exclude=exclude, keep_first_last=False, target=target),
    ]


def _quiet():
    """ONNX Runtime's quantiser prints progress to stdout and warnings to logging; silence both."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    stack.callback(root.setLevel, level)
    return stack


def _reader(input_name: str, arrays: Iterable[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class _ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(arrays)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return _ArrayReader()


def calibrate_ranges(
    model_path: str | Path,
    input_name: str,
    inputs: Iterable[np.ndarray],
    method: str = "entropy",
    percentile: float = 99.999,
    symmetric: bool = True,
    workdir: str | Path = ".",
    cache_path: str | Path | None = None,
    op_types: Sequence[str] | None = None,
):
    """Run the FP32 graph on ``inputs`` (one x_t batch at a time, so memory stays flat) and
    return ONNX Runtime's ``TensorsData`` of the tensors around ``op_types`` (None: every float
    tensor); also saved to ``cache_path``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    ort_method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
                  "minmax": CalibrationMethod.MinMax}[method]
    extra: dict[str, Any] = {"symmetric": symmetric}
    if method == "percentile":
        extra["percentile"] = percentile
    with _quiet():
        calibrator = create_calibrator(
            Path(model_path), list(op_types) if op_types else None, augmented_model_path=str(Path(workdir) / "augmented.onnx"),
            calibrate_method=ort_method, extra_options=extra,
        )
        count = 0
        for x in inputs:
            calibrator.collect_data(_reader(input_name, [x]))
            count += 1
        if count == 0:
            raise ValueError("no calibration inputs")
        ranges = calibrator.compute_data()
    if cache_path is not None:
        save_tensors_data(ranges, cache_path)
    return ranges


def op_types_to_calibrate(configs: Sequence[QuantConfig]) -> list[str] | None:
    """The union of the candidates' op types (None when one of them quantises every op type)."""
    if any(c.op_types is None for c in configs):
        return None
    return sorted({op for c in configs for op in c.op_types or ()})


def conv_nodes(model) -> list[str]:
    """Names of the Conv nodes in graph order (the order of a topologically sorted ONNX graph)."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


def quantize_graph(
    model_path: str | Path,
    output_path: str | Path,
    ranges_cache: str | Path,
    config: QuantConfig,
    nodes_to_quantize: Sequence[str] | None = None,
) -> Path:
    """Write a QDQ copy of ``model_path`` for ``config``, using the ranges in ``ranges_cache``."""
    import onnx
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        load_tensors_data,
        quantize_static,
    )

    if config.target not in TARGETS:
        raise ValueError(f"unknown quantisation target {config.target!r}; choose one of {', '.join(TARGETS)}")
    method = load_tensors_data(ranges_cache).calibration_method
    exclude = list(config.exclude)
    if config.keep_first_last:
        convs = conv_nodes(onnx.load(str(model_path), load_external_data=False))
        exclude += [n for n in (convs[:1] + convs[-1:]) if n not in exclude]
    trt = config.target == "tensorrt"
    extra: dict[str, Any] = {
        "ActivationSymmetric": trt,
        "WeightSymmetric": True,
        "QuantizeBias": not trt,  # TensorRT dequantises int8 (not int32): keep biases float
    }
    if trt:  # Q/DQ on the inputs of the quantised ops only (TensorRT's placement)
        extra["OpTypesToExcludeOutputQuantization"] = list(config.op_types or _all_qdq_op_types())
    size = Path(model_path).stat().st_size
    with _quiet():
        quantize_static(
            str(model_path), str(output_path), None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types) if config.op_types else None,
            per_channel=config.per_channel,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize is not None else None,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            calibration_cache_path=str(ranges_cache),
            use_external_data_format=size > 1_800_000_000,
            extra_options=extra,
        )
    return Path(output_path)


def _all_qdq_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return sorted(QDQRegistry)


@dataclass
class Candidate:
    """One quantised graph of a configuration, and what was measured on it."""

    config: QuantConfig
    path: Path
    sha256: str
    facts: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None  # name of an earlier candidate with the identical graph

    def row(self) -> dict[str, Any]:
        return {"name": self.config.name, **self.config.describe(), "graph_sha256": self.sha256,
                "identical_to": self.same_as, **self.facts}


def distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates whose graphs differ, in order; a repeat records which earlier one it equals."""
    seen: dict[str, str] = {}
    out = []
    for c in candidates:
        if c.sha256 in seen:
            c.same_as = seen[c.sha256]
        else:
            seen[c.sha256] = c.config.name
            out.append(c)
    return out
