"""Every default and every name a user chooses from, defined once.

The CLI's options (:func:`add_options`), the Python API's keyword options, the C ABI's
``diffvos_*_options_init`` and the defaults documented in ``diffvos.h`` and the README all come
from, or are checked by a test against, the dataclasses here. Each field carries its help text
and its valid range, so a bad value is refused with a message naming the option and the range.
Torch-free and import-light: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from diffvos.errors import InputError

# --- names ---------------------------------------------------------------------------------------

#: ``auto`` tries TensorRT EP > CUDA EP > CPU; ``trt`` is the native TensorRT runtime on a plan
#: built by ``diffvos build-engine``; the others name one ONNX Runtime execution provider.
BACKENDS = ("auto", "tensorrt", "cuda", "cpu", "trt")
ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
NATIVE_TENSORRT = "trt"
PRECISIONS = ("fp32", "fp16", "int8")  # fp16: FP16-typed graph; int8: explicit Q/DQ nodes
COLORS = ("BGR", "RGB")  # channel order of the frames a caller passes in
CONCURRENCY = ("serialize", "refuse")  # a second thread on one session waits, or gets BusyError
HEAD_WEIGHTS = ("uniform", "adaptive")  # how an attention bundle's heads are combined (README)
# the ONNX graph on the feature graph's provider, memory bank on its device (diffvos/runtime/device_step.py),
# or the numpy reference kernel on the host (diffvos/runtime/propagation.py)
PROPAGATION_KERNELS = ("graph", "numpy")
MAX_OBJECTS = 255  # object ids are uint8, 0 is the background
MAX_FRAME_SIDE = 16384


# --- option fields -------------------------------------------------------------------------------


def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field that documents itself: help, valid range, and whether the CLI offers it."""
    meta = {"help": help, "minimum": minimum, "exclusive": exclusive, "choices": choices, "check": check, "cli": cli}
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe_range(f: dataclasses.Field) -> str:
    """The valid values of a field, in words ('an integer >= 0', 'one of BGR, RGB', ...)."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(m["choices"])
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(_kind(f), "a value")
    if m.get("minimum") is not None:
        return f"{kind} {'>' if m['exclusive'] else '>='} {m['minimum']:g}"
    return kind


def _kind(f: dataclasses.Field) -> type | None:
    text = str(f.type).replace(" ", "")
    for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text == name or text.startswith(name + "|"):
            return t
    return None


def problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is not valid for field ``f`` (None when it is)."""
    m, kind = f.metadata, _kind(f)
    if value is None and "None" in str(f.type):
        return None
    ok_type = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, True)
    if not ok_type:
        return f"must be {describe_range(f)}, got {value!r}"
    if m.get("choices") and value not in m["choices"]:
        return f"must be {describe_range(f)}, got {value!r}"
    lo = m.get("minimum")
    if lo is not None and (value <= lo if m["exclusive"] else value < lo):
        return f"must be {describe_range(f)}, got {value!r}"
    if m.get("check"):
        return m["check"](value)
    return None


def problems(cls: type, values: dict[str, Any], label: Callable[[str], str] = lambda name: name) -> list[str]:
    """Every invalid value among ``values`` for the fields of config dataclass ``cls``, named by ``label``."""
    return [f"{label(f.name)} {why}" for f in dataclasses.fields(cls)
            if f.name in values and f.metadata.get("help") and (why := problem(f, values[f.name]))]


def validate(obj: Any) -> None:
    """Raise InputError listing every invalid field of a config dataclass instance."""
    bad = problems(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if bad:
        raise InputError("; ".join(bad))


def _mag_filter_problem(value: Any) -> str | None:
    if value in ("off", "adaptive"):
        return None
    try:
        radius = float(value)
    except (TypeError, ValueError):
        return f"must be 'off', 'adaptive' or a radius in feature cells (a number > 0), got {value!r}"
    return None if radius > 0 else f"must be 'off', 'adaptive' or a radius > 0 in feature cells, got {value!r}"


# --- the configurations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PropagationConfig:
    """Label propagation (METHOD.md section 2); the defaults are the published reference, plus
    the MAG-Filter radius this project chose on DAVIS-2016 (README, "MAG-Filter")."""

    temperature: float = option(0.2, "affinity temperature T in exp(cos/T)", minimum=0, exclusive=True)
    topk: int = option(15, "correspondences kept per position (ties kept)", minimum=1)
    radius: int = option(15, "local window radius in feature cells, 0 = no window", minimum=0)
    memory: int = option(28, "past frames kept besides the first", minimum=0)
    mag_filter: str = option("12", "correspondence-magnitude filter: 'off', 'adaptive', or a fixed radius in "
                             "feature cells", check=_mag_filter_problem)
    feature_dtype: str = option("float16", "memory feature storage (float32 reproduces the reference exactly)",
                                choices=("float16", "float32"), cli=False)
    tile: int | None = option(None, "tile side in cells of the windowed kernel: the numpy kernel's query tiles, the "
                              "graph's key blocks (None: the measured default)", minimum=1, cli=False)
    head_weights: str = option("uniform", "attention bundles: combine the heads uniformly, or weight each by how well "
                               "it propagates the first mask onto the first frame", choices=HEAD_WEIGHTS)
    propagation_kernel: str = option("graph", "where propagation runs: 'graph' (an ONNX graph on the feature graph's "
                                     "provider, memory bank in device memory) or 'numpy' (the host reference)",
                                     choices=PROPAGATION_KERNELS)

    def __post_init__(self) -> None:
        if isinstance(self.mag_filter, (int, float)) and not isinstance(self.mag_filter, bool):
            object.__setattr__(self, "mag_filter", f"{self.mag_filter:g}")
        validate(self)


@dataclass(frozen=True)
class SessionConfig:
    """One stream's options besides propagation."""

    color: str = option("BGR", "channel order of the frames passed in", choices=COLORS, cli=False)
    concurrency: str = option("serialize", "a second thread on one session waits (serialize) or gets BusyError "
                              "(refuse)", choices=CONCURRENCY, cli=False)
    seed: int = option(0, "seed of the fixed noise bank", minimum=0)
    fresh_noise: bool = option(False, "draw new noise for every frame, as the paper does")
    inversion_steps: int = option(0, "DDIM inversion steps S from x_0 to x_t instead of random noise (0: random "
                                  "noise; needs a bundle exported with --noise-graph)", minimum=0)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.propagation, PropagationConfig):
            raise InputError(f"propagation must be a PropagationConfig, got {type(self.propagation).__name__}")
        validate(self)

    @classmethod
    def from_options(cls, **options: Any) -> "SessionConfig":
        """Flat keyword options (``memory=10, color="RGB"``, or ``propagation=PropagationConfig``)."""
        own = {f.name for f in dataclasses.fields(cls)}
        prop = {f.name for f in dataclasses.fields(PropagationConfig)}
        unknown = sorted(set(options) - own - prop)
        if unknown:
            raise InputError(f"unknown session option(s) {', '.join(unknown)}; valid: {', '.join(sorted(own | prop))}")
        nested = {k: v for k, v in options.items() if k in prop}
        bad = problems(cls, options) + problems(PropagationConfig, nested)
        if bad:
            raise InputError("; ".join(bad))
        if nested:
            base = options.get("propagation") or PropagationConfig()
            options = {**options, "propagation": dataclasses.replace(base, **nested)}
        return cls(**{k: v for k, v in options.items() if k in own})


@dataclass(frozen=True)
class RuntimeConfig:
    """How a bundle's graphs are loaded."""

    backend: str = option("auto", "execution backend: ONNX Runtime provider (auto: TensorRT EP > CUDA EP > CPU), "
                          "or 'trt' for the native TensorRT runtime on a plan built by 'diffvos build-engine'",
                          choices=BACKENDS)
    threads: int = option(0, "CPU threads for ONNX Runtime and the propagation's BLAS (0: the runtime chooses, "
                          "see diffvos/runtime/threads.py)", minimum=0)
    verify_files: bool = option(True, "check every graph's sha256 on load", cli=False)
    allow_failed_calibration: bool = option(False, "load an INT8 bundle whose calibration failed its accuracy gate "
                                            "(written by 'diffvos calibrate --allow-failed'); refused otherwise")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class SegmentConfig:
    """Zero-shot video semantic segmentation (``diffvos segment``; README, "Video semantic segmentation")."""

    segments: int = option(0, "segments K of the first frame's K-means (0: chosen by the silhouette rule)",
                           minimum=0)
    max_segments: int = option(8, "largest K the silhouette rule tries (from 2)", minimum=2)
    knn: int = option(10, "neighbours the scene-context model votes with", minimum=1)
    knn_temperature: float = option(0.1, "vote weight exp(cos/T) of a neighbour", minimum=0, exclusive=True)
    anchor_vectors: int = option(1024, "first-frame (feature, segment) pairs the context model keeps for the "
                                 "whole video", minimum=1)
    frame_vectors: int = option(512, "pairs each later frame adds to the context model (class-balanced sample "
                                "of its own prediction)", minimum=1)
    context_frames: int = option(4, "recent frames whose pairs the context model keeps (FIFO)", minimum=0)
    refine_weight: float = option(0.5, "weight of the temporal-correspondence aggregate against the context "
                                  "model's prediction (0: no refinement)", minimum=0)
    kmeans_iterations: int = option(50, "Lloyd iterations of the first frame's K-means", minimum=1, cli=False)
    silhouette_sample: int = option(2000, "positions the silhouette rule scores", minimum=10, cli=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.refine_weight > 1:
            raise InputError(f"refine_weight must be at most 1, got {self.refine_weight!r}")


# --- the command line, generated from the fields -------------------------------------------------


def add_options(parser: Any, cls: type) -> None:
    """One CLI option per field of ``cls`` offered to the CLI, with its default in the help
    (``parser``: an ``argparse.ArgumentParser`` or one of its argument groups)."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli"):
            continue
        kind = _kind(f)
        text = f"{m['help']} (default {f.default})"
        if kind is bool:
            parser.add_argument(flag(f.name), action="store_true", default=f.default, help=m["help"])
        elif m.get("choices"):
            parser.add_argument(flag(f.name), choices=m["choices"], default=f.default, help=text)
        else:
            parser.add_argument(flag(f.name), type=kind or str, default=f.default, help=text)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config ``cls`` from parsed CLI options; an invalid value names its flag and range."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.metadata.get("cli") and hasattr(args, f.name)}
    values.update(overrides)
    bad = problems(cls, values, flag)
    if bad:
        raise InputError("; ".join(bad))
    return cls(**values)


def session_config_from_args(args: argparse.Namespace, **overrides: Any) -> SessionConfig:
    """Session + propagation options of ``diffvos track`` / ``demo`` / ``bench quality``."""
    return from_args(SessionConfig, args, propagation=from_args(PropagationConfig, args), **overrides)


def add_session_options(parser: argparse.ArgumentParser) -> None:
    add_options(parser.add_argument_group("propagation (METHOD.md section 2)"), PropagationConfig)
    runtime = parser.add_argument_group("runtime")
    add_options(runtime, RuntimeConfig)
    add_options(runtime, SessionConfig)


# --- export ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportDefaults:
    """A backbone's default export settings (the published ones for the diffusion models)."""

    layer: int
    timestep: int | None = None  # None: not a diffusion model
    ensemble: int | None = None
    height: int = 480
    width: int = 832
    # streams one feature-graph call may take (the TensorRT profile's maximum): a batch is
    # max_streams x E draws, so the diffusion models, with E=8, default to fewer streams
    max_streams: int = 8


EXPORT_DEFAULTS = {
    "adm": ExportDefaults(layer=6, timestep=30, ensemble=8, max_streams=2),  # METHOD.md: output block 6, t=30, E=8
    "sd": ExportDefaults(layer=9, timestep=100, ensemble=8, max_streams=2),  # METHOD.md: 9th up-block resnet, t=100
    "mobilenetv2": ExportDefaults(layer=13),  # the last stride-16 stage (baseline, not diffusion)
}
DYNAMIC_MAX_SIZE = (1088, 1920)  # [H, W] upper bound of a dynamic bundle unless --max-size says otherwise

# --- TensorRT builds (ONNX Runtime's TensorRT EP and ``diffvos build-engine`` alike) ---------------

TRT_WORKSPACE_GB = 4.0  # builder workspace limit (a cap on tactic scratch memory, not an allocation)
TRT_OPT_LEVEL = 3  # builder optimisation level 0..5 (TensorRT's default)
