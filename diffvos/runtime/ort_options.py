"""ONNX Runtime provider options for a bundle graph: what each GPU provider must be told.

ONNX Runtime's TensorRT EP builds its engine from the options, not from the graph alone:

* precision: a Q/DQ (int8) graph needs ``trt_int8_enable`` (TensorRT refuses it otherwise: "int8
  is not configured in the builder") plus ``trt_fp16_enable`` for the layers left in float; an
  FP16-typed graph needs ``trt_fp16_enable``;
* a dynamic graph gets an explicit optimisation profile (``trt_profile_min/opt/max_shapes``), sized
  by the one rule of :func:`diffvos.bundle.sizes.graph_profile`, instead of ONNX Runtime rebuilding
  the engine for every new shape;
* builder optimisation level and workspace, as ``diffvos build-engine`` uses them;
* engine and timing caches in the user cache (:mod:`diffvos.runtime.caches`), never in the bundle.

Every value is a string, as ONNX Runtime stores provider options; tests compare them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffvos.config import ORT_PROVIDERS, TRT_OPT_LEVEL, TRT_WORKSPACE_GB

Shape = tuple[int, ...]

TENSORRT, CUDA, CPU = ORT_PROVIDERS["tensorrt"], ORT_PROVIDERS["cuda"], ORT_PROVIDERS["cpu"]


@dataclass(frozen=True)
class GpuOptions:
    """What the GPU providers need to know about one graph (nothing here matters on the CPU)."""

    precision: str = "fp32"  # the graph's precision (config.PRECISIONS)
    input_name: str = ""
    profile: tuple[Shape, Shape, Shape] | None = None  # (min, opt, max) of a dynamic input; None: static
    graph_sha256: str = ""  # part of the engine cache key
    device: int = 0
    workspace_gb: float = TRT_WORKSPACE_GB
    opt_level: int = TRT_OPT_LEVEL
    cache_root: Path | None = None  # None: the user cache; the TensorRT EP cache goes to <root>/trt/<key>
    cache: bool = True  # keep TensorRT engines and timing caches (off: build at every start)
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # provider -> more options (override)


def _flag(value: bool) -> str:
    return "True" if value else "False"


def shapes_text(input_name: str, shape: Shape) -> str:
    """``x_t:2x3x480x832``: ONNX Runtime's format for one input's profile shape."""
    return f"{input_name}:" + "x".join(str(int(d)) for d in shape)


def tensorrt_options(gpu: GpuOptions, cache_dir: Path | None) -> dict[str, str]:
    """The TensorRT EP's options for ``gpu`` with its engine cache in ``cache_dir`` (None: no cache)."""
    opts = {
        "device_id": str(gpu.device),
        "trt_fp16_enable": _flag(gpu.precision in ("fp16", "int8")),
        "trt_int8_enable": _flag(gpu.precision == "int8"),
        "trt_builder_optimization_level": str(gpu.opt_level),
        "trt_max_workspace_size": str(int(gpu.workspace_gb * (1 << 30))),
    }
    if gpu.precision == "int8":  # explicit Q/DQ scales: no calibration table
        opts["trt_int8_use_native_calibration_table"] = "False"
    if gpu.profile is not None:
        lo, opt, hi = gpu.profile
        opts["trt_profile_min_shapes"] = shapes_text(gpu.input_name, lo)
        opts["trt_profile_opt_shapes"] = shapes_text(gpu.input_name, opt)
        opts["trt_profile_max_shapes"] = shapes_text(gpu.input_name, hi)
    if cache_dir is not None:
        opts.update({
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache_dir),
        })
    opts.update(gpu.extra.get(TENSORRT, {}))
    return opts


def cuda_options(gpu: GpuOptions) -> dict[str, str]:
    return {"device_id": str(gpu.device), **gpu.extra.get(CUDA, {})}


def provider_options(provider: str, gpu: GpuOptions, cache_dir: Path | None = None) -> dict[str, str]:
    """Options for ``provider`` (empty for the CPU)."""
    if provider == TENSORRT:
        return tensorrt_options(gpu, cache_dir)
    if provider == CUDA:
        return cuda_options(gpu)
    return dict(gpu.extra.get(provider, {}))


def engine_facts(gpu: GpuOptions, ort_version: str, trt_version: str | None,
                 device: dict[str, Any] | None) -> dict[str, Any]:
    """Everything that makes a TensorRT EP engine unusable elsewhere: the cache key's parts."""
    return {
        "onnxruntime": ort_version, "tensorrt": trt_version or "unknown",
        "gpu": (device or {}).get("gpu", "unknown"),
        "compute_capability": (device or {}).get("compute_capability", "?"),
        "graph_sha256": gpu.graph_sha256, "precision": gpu.precision,
        "profile": [list(s) for s in gpu.profile] if gpu.profile else None,
        "opt_level": gpu.opt_level, "workspace_gb": gpu.workspace_gb,
    }
