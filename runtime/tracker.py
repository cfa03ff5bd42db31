"""One video stream's tracking state: features -> propagation -> label maps (METHOD.md section 2).

``Tracker`` is the single path through the runtime: the CLI's ``track``, the demo and the
embedding API all drive it frame by frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from diffvos.runtime.errors import InputError
from diffvos.runtime.features import FeatureExtractor
from diffvos.runtime.postprocess import labels_to_onehot, soft_to_labels
from diffvos.runtime.propagation import PropagationConfig, Propagator


@dataclass
class StepResult:
    labels: np.ndarray  # uint8 (H, W), contiguous ids 0..K at the frame's size
    soft: np.ndarray  # float32 (K+1, h, w) at feature resolution
    timings: dict[str, float]


class Tracker:
    def __init__(self, extractor: FeatureExtractor, config: PropagationConfig | None = None) -> None:
        self.extractor = extractor
        self.config = config or PropagationConfig()
        self.propagator: Propagator | None = None
        self.frame_hw: tuple[int, int] | None = None
        self.num_objects = 0

    def start(self, bgr: np.ndarray, labels: np.ndarray) -> StepResult:
        """First frame and its mask (uint8 ids 0..K contiguous, same size as the frame)."""
        if labels.shape != bgr.shape[:2]:
            raise InputError(f"mask is {labels.shape[1]}x{labels.shape[0]}, frame is {bgr.shape[1]}x{bgr.shape[0]}")
        k = int(labels.max())
        if k == 0:
            raise InputError("mask has no object")
        t0 = time.perf_counter()
        feats = self.extractor(bgr)
        t1 = time.perf_counter()
        c, h, w = feats.shape
        onehot = labels_to_onehot(labels, (h, w), k + 1)
        self.propagator = Propagator(c, h, w, k + 1, self.config)
        self.propagator.start(feats, onehot)
        self.frame_hw = bgr.shape[:2]
        self.num_objects = k
        timings = {**self.extractor.timings, "propagate_ms": (time.perf_counter() - t1) * 1e3}
        timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        return StepResult(labels=labels.astype(np.uint8, copy=False), soft=onehot, timings=timings)

    def step(self, bgr: np.ndarray) -> StepResult:
        if self.propagator is None:
            raise RuntimeError("Tracker.step() before start()")
        if bgr.shape[:2] != self.frame_hw:
            raise InputError(
                f"frame is {bgr.shape[1]}x{bgr.shape[0]}, the video started at {self.frame_hw[1]}x{self.frame_hw[0]}"
            )
        t0 = time.perf_counter()
        feats = self.extractor(bgr)
        t1 = time.perf_counter()
        soft = self.propagator.step(feats)
        t2 = time.perf_counter()
        scaled = self.extractor.input_size(self.frame_hw)
        labels = soft_to_labels(soft, self.extractor.stride, self.frame_hw, scaled_hw=scaled)
        t3 = time.perf_counter()
        timings = {
            **self.extractor.timings,
            "propagate_ms": (t2 - t1) * 1e3,
            "postprocess_ms": (t3 - t2) * 1e3,
            "total_ms": (t3 - t0) * 1e3,
        }
        return StepResult(labels=labels, soft=soft, timings=timings)
