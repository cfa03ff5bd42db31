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

    # --- embedding API support (runtime/api.py): buffers in, objects added/removed mid-video ---

    def step_into(self, bgr: np.ndarray, out_labels: np.ndarray, out_soft: np.ndarray | None = None) -> dict[str, float]:
        """``step`` writing the label map (and optionally the soft mask) into caller buffers."""
        result = self.step(bgr)
        np.copyto(out_labels, result.labels)
        if out_soft is not None:
            np.copyto(out_soft, result.soft)
        return result.timings

    def add_objects(self, bgr: np.ndarray, new_labels: np.ndarray, out_labels: np.ndarray | None = None) -> dict[str, float]:
        """Objects appearing on this frame, mid-video: ``new_labels`` (H, W) holds ids K+1..K+n
        where the new objects are and 0 elsewhere.

        The frame is tracked as usual for the existing objects; the new objects' mask then
        overrides the prediction, and the frame enters memory with the combined mask, so later
        frames propagate the new objects from it (METHOD.md section 2 with the memory grown by
        n channels, zero in the frames stored before).
        """
        if self.propagator is None:
            raise RuntimeError("Tracker.add_objects() before start()")
        if new_labels.shape != bgr.shape[:2] or bgr.shape[:2] != self.frame_hw:
            raise InputError(f"frame {bgr.shape[:2]} / mask {new_labels.shape} differ from the video's size {self.frame_hw}")
        if self.config.memory == 0:
            raise InputError("objects cannot be added mid-video with memory=0: the frame would not be remembered")
        k_old, k_new = self.num_objects, int(new_labels.max())
        if k_new <= k_old or int(new_labels[new_labels > 0].min()) <= k_old:
            raise InputError(f"new object ids must be {k_old + 1}..; got {int(new_labels.max())}")
        t0 = time.perf_counter()
        feats = self.extractor(bgr)
        t1 = time.perf_counter()
        soft = self.propagator.step(feats)  # pushes the frame with the old objects' prediction
        self.propagator.add_objects(k_new - k_old)
        grid = soft.shape[1:]
        onehot = labels_to_onehot(new_labels, grid, k_new + 1)
        combined = np.zeros((k_new + 1, *grid), np.float32)
        combined[: k_old + 1] = soft
        combined[k_old + 1 :] = onehot[k_old + 1 :]
        inside = onehot[0] == 0  # cells of a new object: the annotation wins
        combined[: k_old + 1, inside] = 0.0
        bank = self.propagator.bank
        bank.masks[bank.context_slots()[-1]] = np.moveaxis(combined, 0, -1)  # the frame just pushed
        t2 = time.perf_counter()
        scaled = self.extractor.input_size(self.frame_hw)
        labels = soft_to_labels(soft, self.extractor.stride, self.frame_hw, scaled_hw=scaled)
        np.copyto(labels, new_labels, where=new_labels > 0)
        if out_labels is not None:
            np.copyto(out_labels, labels)
        self.num_objects = k_new
        t3 = time.perf_counter()
        return {
            **self.extractor.timings,
            "propagate_ms": (t2 - t1) * 1e3,
            "postprocess_ms": (t3 - t2) * 1e3,
            "total_ms": (t3 - t0) * 1e3,
        }

    def remove_object(self, k: int) -> None:
        """Stop tracking object channel ``k`` (1..K); channels above it shift down by one."""
        if self.propagator is None:
            raise RuntimeError("Tracker.remove_object() before start()")
        self.propagator.remove_object(k)
        self.num_objects -= 1

    def reset(self) -> None:
        """Forget the video: the next call must be ``start``."""
        self.propagator = None
        self.frame_hw = None
        self.num_objects = 0

    def memory_bytes(self) -> int:
        """Bytes of this tracker's state: memory bank, propagation scratch, extractor buffers."""
        total = 0
        if self.propagator is not None:
            total += self.propagator.bank.nbytes + self.propagator.scratch_nbytes
        x = self.extractor
        total += sum(a.nbytes for a in getattr(x, "_x0", {}).values())
        for inj in getattr(x, "_noise", {}).values():
            total += inj._out.nbytes + (inj._bank.nbytes if inj._bank is not None else 0)
        return total
