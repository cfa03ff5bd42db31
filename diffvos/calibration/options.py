"""What ``diffvos calibrate`` can be asked, and its defaults, defined once (the CLI's flags and the
Python API read them here). Import-light: the CLI builds its parser from this module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffvos.config import SessionConfig

METHODS = ("entropy", "percentile", "minmax")
TARGETS = ("tensorrt", "cpu")
DEFAULT_TRT_VERSION = "10.3.0"  # named in the legacy calibration cache (JetPack 6.x)


@dataclass(frozen=True)
class GateLimits:
    """Pass/fail limits of the mask gate (README "Precision and TensorRT")."""

    min_iou: float = 0.98  # mean mask IoU vs FP32, per video
    max_jf_drop: float = 0.5  # J&F points (0-100) INT8 may lose against FP32, per video with ground truth
    noise_level: float = 1.0  # grey levels of input noise defining the noise floor (0: no floor)

    def iou_limit(self, floor: float | None) -> float:
        """A calibration clip's IoU limit: ``min_iou``, or FP32's own agreement under the noise where
        lower (held-out videos get ``min_iou`` itself: :mod:`diffvos.calibration.mask_gate`)."""
        return self.min_iou if floor is None else min(self.min_iou, floor)

    def passes(self, mean_iou: float, iou_limit: float, jf_delta: float | None) -> bool:
        """The gate's rule: the IoU limit reached, and no more J&F lost than allowed where measured."""
        return bool(mean_iou >= iou_limit and (jf_delta is None or jf_delta >= -self.max_jf_drop))

    def as_dict(self) -> dict[str, float]:
        return {"min_iou": self.min_iou, "max_jf_drop": self.max_jf_drop, "noise_level": self.noise_level}


@dataclass(frozen=True)
class QuantConfig:
    """What to quantise and how. ``op_types=None`` means every op type ONNX Runtime can quantise.

    Every field is explicit per candidate: ``keep_first_last`` once defaulted to True, so a
    candidate built without it silently kept the first and last conv float (issue 14)."""

    name: str = "conv"
    op_types: tuple[str, ...] | None = ("Conv",)
    exclude: tuple[str, ...] = ()  # node names kept in float
    keep_first_last: bool = False  # also keep the first and the last Conv in float
    per_channel: bool = True
    target: str = "tensorrt"

    @property
    def placement(self) -> str:
        """Where the Q/DQ pairs go: TensorRT's placement for tensorrt, ONNX Runtime's default for cpu."""
        return "inputs" if self.target == "tensorrt" else "inputs+outputs"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_types": list(self.op_types) if self.op_types else "all",
            "excluded_nodes": list(self.exclude),
            "keep_first_last_conv": self.keep_first_last,
            "per_channel": self.per_channel,
            "target": self.target,
            "placement": self.placement,
        }


@dataclass
class CalibrationOptions:
    num_frames: int = 64
    heldout: int = 16  # held-out frames of the calibration sources: feature cosine and sensitivity
    method: str = "entropy"
    percentile: float = 99.999
    target: str = "tensorrt"
    configs: list[QuantConfig] | None = None  # None: candidate_configs(target, exclude)
    exclude: tuple[str, ...] = ()  # nodes always kept float
    search: bool = True  # mixed-precision search (with the sensitivity table it needs)
    sensitivity_nodes: int = 0  # nodes measured for the ranking, spread through the graph (0: all)
    proxy_frames: int = 25  # frames of each calibration video the search's gate tracks
    limits: GateLimits = field(default_factory=GateLimits)
    session: SessionConfig = field(default_factory=SessionConfig)  # as the user tracks (MAG-Filter 12 ...)
    masks: list[str | None] | None = None  # per --frames source: first mask, annotation folder or None
    heldout_videos: list[tuple[str, str]] = field(default_factory=list)  # (video, mask or annotations)
    heldout_max_frames: int = 0  # 0: whole videos
    speed_runs: int = 5
    threads: int = 0
    trt_version: str = DEFAULT_TRT_VERSION
    allow_failed: bool = False  # write a failed bundle (the runtime refuses it without an override)
