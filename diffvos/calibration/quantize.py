"""Explicit INT8 (Q/DQ) quantisation of a feature graph with ONNX Runtime's quantisation tooling.

The activation ranges are collected once (``calibrate_ranges``), kept in ONNX Runtime's JSON
range cache, and reused for every candidate configuration (``quantize_graph``), so choosing what
to quantise by measurement costs one calibration pass, not one per candidate.

Two targets:

* ``tensorrt`` (default): symmetric int8 activations and weights (zero point 0) and float
  biases: the Q/DQ pattern TensorRT's strongly typed networks accept; ONNX Runtime runs it too.
* ``cpu``: uint8 activations, int8 weights, int32 biases: ONNX Runtime's fastest CPU kernels,
  but not loadable as a TensorRT network.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

METHODS = ("entropy", "percentile", "minmax")
TARGETS = ("tensorrt", "cpu")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantise and how. ``op_types=None`` means every op type ONNX Runtime can quantise."""

    name: str = "conv"
    op_types: tuple[str, ...] | None = ("Conv",)
    exclude: tuple[str, ...] = ()  # node names kept in float
    keep_first_last: bool = True  # keep the first and the last Conv in float
    per_channel: bool = True
    target: str = "tensorrt"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_types": list(self.op_types) if self.op_types else "all",
            "excluded_nodes": list(self.exclude),
            "keep_first_last_conv": self.keep_first_last,
            "per_channel": self.per_channel,
            "target": self.target,
        }


def candidate_configs(target: str = "tensorrt") -> list[QuantConfig]:
    """The configurations measured by default, most aggressive first. Quantising every op type
    (``op_types=None``) is left out: measured on the tiny ADM it ran 0.66x FP32 at cosine 0.992,
    on ADM-256 0.44x at cosine 0.81 (the Q/DQ pairs around every normalisation and activation cost
    more than the integer kernels save); ask for it with ``--ops all``."""
    return [
        QuantConfig("conv+matmul", ("Conv", "MatMul"), target=target),
        QuantConfig("conv", ("Conv",), keep_first_last=False, target=target),
        QuantConfig("conv-keep-ends", ("Conv",), keep_first_last=True, target=target),
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


def preprocess_graph(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime's recommended pre-pass (shape inference + graph clean-up) before quantising."""
    from onnxruntime.quantization import quant_pre_process

    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    return Path(dst)


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
    extra = {
        "ActivationSymmetric": trt,
        "WeightSymmetric": True,
        "QuantizeBias": not trt,  # TensorRT dequantises int8 (not int32): keep biases float
    }
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


def graph_op_counts(model_path: str | Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes and float ops a graph holds."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(model_path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


@dataclass
class Candidate:
    config: QuantConfig
    path: Path
    cosine: float
    max_rel_error: float
    ms: float | None = None
    speedup: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"name": self.config.name, "cosine": self.cosine, "max_rel_error": self.max_rel_error,
                "ms": self.ms, "speedup_vs_fp32": self.speedup, **self.extra}


def choose(candidates: list[Candidate], min_cosine: float) -> Candidate:
    """The fastest candidate that keeps ``min_cosine`` (the most accurate if none does; the most
    accurate passing one when no timings were taken)."""
    passing = [c for c in candidates if c.cosine >= min_cosine]
    if not passing:
        return max(candidates, key=lambda c: c.cosine)
    if all(c.ms is not None for c in passing):
        return min(passing, key=lambda c: c.ms)
    return max(passing, key=lambda c: c.cosine)


def with_exclusions(config: QuantConfig, nodes: Sequence[str]) -> QuantConfig:
    return replace(config, name=f"{config.name}-minus{len(nodes)}", exclude=tuple(config.exclude) + tuple(nodes))
