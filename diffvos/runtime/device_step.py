"""Propagation on the device: the propagation graph run with IO binding, the memory bank in device
memory (issue 10, "the device-resident step").

:class:`GraphPropagator` has the :class:`~diffvos.runtime.propagation.Propagator` interface
(start / predict / remember / step / add_objects / remove_object, plus ``step_to_labels``) and
runs :mod:`diffvos.runtime.propagation_graph` once per frame. Its bank is two device tensors,
features (N+1, h, w, H*d) in the bank dtype and masks (N+1, h, w, K+1) float32, filled in the ring
order of :class:`~diffvos.runtime.memory.RingIndex`, so the filled slots are always a prefix and
are bound by address and shape as (1 + count, ...), no copy. Per frame:

* ``query``: the feature graph's output, bound where it lies on the device (a row of a batch);
* ``soft_hwk`` is written straight into the mask slot it replaces: every memory mask is gathered
  before the node writing it can run (a data dependency);
* ``features`` (the frame's bank entry) goes straight into its slot while the ring is filling (the
  slot is outside the bound prefix). Once the ring is full the replaced slot is read by the same
  run, and ONNX Runtime may compute this output first (it depends on the query alone), which
  corrupted that slot before it was read (measured: 0.65 soft error); it then goes to a staging
  tensor and is copied into the slot after the run (a device copy);
* ``labels`` (uint8, object ids, frame size) is written into the caller's ``out``: with the frame
  (uploaded by the input graph), the only bytes crossing per frame. ``soft`` comes down only into
  a caller's ``probs``.

The same code runs on the CPU provider (device "cpu": host memory, nothing copied) in CI and on
CUDA. Objects added or removed mid-video reshape the mask bank through the host (rare).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from diffvos.errors import InputError
from diffvos.runtime.device import DeviceIO, DeviceTensor
from diffvos.runtime.graph_engines import GraphEngines
from diffvos.runtime.memory import (
    RingBank,
    RingIndex,
    drop_mask_channel,
    grow_mask_channels,
)
from diffvos.runtime.postprocess import LabelSpec, nearest_indices
from diffvos.runtime.propagation_graph import GraphSpec


class DeviceBank(RingBank):
    """First frame + ring in device memory (the layout of :class:`~diffvos.runtime.memory.MemoryBank`)."""

    def __init__(self, io: DeviceIO, spec: GraphSpec, num_classes: int) -> None:
        self.io, self.capacity = io, spec.capacity
        self.features = io.empty((spec.capacity + 1, spec.h, spec.w, spec.bank_channels), spec.bank_dtype)
        self.masks = io.empty((spec.capacity + 1, spec.h, spec.w, num_classes), np.float32)
        self.ring = RingIndex(spec.capacity)

    def repeat_first(self, n: int) -> None:
        """Push ``n`` copies of the first frame's entry, copied on the device (as
        ``MemoryBank.repeat_first``)."""
        if not self.ring.has_first:
            raise InputError("memory bank: repeat_first() before the first frame")
        for _ in range(n if self.capacity else 0):
            slot = self.ring.target
            self.io.copy(self.features[slot], self.features[0])
            self.io.copy(self.masks[slot], self.masks[0])
            self.ring.advance()

    def set_masks(self, masks: np.ndarray) -> None:
        """Replace every slot's mask (a new channel count: objects added or removed)."""
        self.masks = self.io.upload(np.ascontiguousarray(masks, np.float32))

    def host_masks(self) -> np.ndarray:
        return self.io.download(self.masks)


class GraphPropagator:
    """The propagator interface over the propagation graph with the bank on the device.

    ``labels`` and ``out_hw``: the session's label geometry and frame size (the graph makes the
    label map); ``head_weights``: "uniform" or "adaptive" for an attention graph.
    """

    def __init__(self, graphs: GraphEngines, spec: GraphSpec, num_classes: int, io: DeviceIO,
                 out_hw: tuple[int, int] | None = None, head_weights: str = "uniform") -> None:
        if num_classes < 1:
            raise InputError(f"propagation: bad number of mask channels {num_classes}")
        self.spec, self.io, self.graphs = spec, io, graphs
        self.engine = graphs.propagation(spec)
        self.remember_engine = graphs.remember(spec)
        self.channels, self.h, self.w = spec.query_channels, spec.h, spec.w
        self.head_weights = head_weights
        self.bank = DeviceBank(io, spec, num_classes)
        self.staged_features = io.empty((1, spec.h, spec.w, spec.bank_channels), spec.bank_dtype)
        self._scratch(num_classes)
        self.threshold = io.empty((spec.heads,), np.float32) if self._adaptive else None
        self.weights = np.full(spec.heads, 1.0 / spec.heads)
        self.head_scores: np.ndarray | None = None
        self._weights = io.upload(self.weights.astype(np.float32)) if spec.heads > 1 else None
        self._lut_host: np.ndarray | None = None
        self._lut = self._rows = self._cols = None
        if spec.labels is not None and out_hw is not None:
            sh, sw = spec.labels.scaled_hw
            self._rows = io.upload(nearest_indices(sh, out_hw[0]).astype(np.int64))
            self._cols = io.upload(nearest_indices(sw, out_hw[1]).astype(np.int64))
            self._lut = io.empty((256,), np.int32)
        self.out_hw = out_hw
        self._predicted = False

    def _scratch(self, num_classes: int) -> None:
        s = self.spec
        self.staged_mask = self.io.empty((1, s.h, s.w, num_classes), np.float32)
        self.soft = self.io.empty((num_classes, s.h, s.w), np.float32)

    @property
    def _adaptive(self) -> bool:
        return self.spec.mag is not None and self.spec.mag.mode == "adaptive"

    @property
    def num_classes(self) -> int:
        return self.bank.num_classes

    @property
    def scratch_nbytes(self) -> int:
        return self.staged_features.nbytes + self.staged_mask.nbytes + self.soft.nbytes

    @property
    def last_threshold(self) -> float | np.ndarray | None:
        """The adaptive MAG-Filter's threshold of the last run (per head for an attention graph)."""
        if self.threshold is None or not len(self.bank):
            return None
        values = self.io.download(self.threshold)
        return float(values[0]) if self.spec.heads == 1 else values

    # -- the Propagator interface ------------------------------------------------------------------
    def start(self, features: np.ndarray | DeviceTensor, onehot: np.ndarray) -> None:
        """First frame (Cq, h, w) and its one-hot mask (K+1, h, w); empties the memory."""
        self.bank.ring.reset()
        self._store(0, features, onehot)
        self.bank.ring.has_first = True
        self._predicted = False
        if self.spec.heads > 1 and self.head_weights == "adaptive":
            self._adapt_weights(features, onehot)

    def push(self, features: np.ndarray | DeviceTensor, mask: np.ndarray) -> None:
        """Remember a frame with a given mask without propagating it (as ``MemoryBank.push``)."""
        if not len(self.bank):
            raise InputError("memory bank: push() before start()")
        if self.spec.capacity:
            self._store(self.bank.ring.target, features, mask)
            self.bank.ring.advance()

    def _store(self, slot: int, features: np.ndarray | DeviceTensor, mask: np.ndarray) -> None:
        """Write a frame's bank entry (the first-frame graph: normalised features, or keys) and its
        mask (K+1, h, w) into ``slot``."""
        self._check_mask(mask)
        binding = self.remember_engine.io_binding()
        self._bind_query(binding, features)
        self.io.bind(binding, "features", self.bank.features[slot].reshape(*self.staged_features.shape), output=True)
        self.remember_engine.run_binding(binding)
        self._write_mask(slot, mask)

    def _check_mask(self, mask: np.ndarray) -> None:
        if mask.shape != (self.num_classes, self.h, self.w):
            raise InputError(f"mask is {mask.shape}, expected {(self.num_classes, self.h, self.w)}")

    def _write_mask(self, slot: int, mask: np.ndarray) -> None:
        """A (K+1, h, w) mask into the bank slot, in the bank's (h, w, K+1) layout (uploaded)."""
        self.io.write(self.bank.masks[slot].reshape(*self.staged_mask.shape),
                      np.moveaxis(mask.astype(np.float32, copy=False), 0, -1)[None])

    def predict(self, features: np.ndarray | DeviceTensor) -> np.ndarray:
        """Soft mask (K+1, h, w) of a new frame, not remembered (:meth:`remember` decides its mask)."""
        soft = np.empty((self.num_classes, self.h, self.w), np.float32)
        self._run(features, soft_out=soft, commit=False)
        self._predicted = True
        return soft

    def remember(self, mask: np.ndarray) -> None:
        """Push the last predicted frame into the memory with ``mask`` (K+1, h, w)."""
        if not self._predicted:
            raise InputError("Propagator.remember() without a predict() before it")
        self._predicted = False
        if self.spec.capacity == 0:
            return
        self._check_mask(mask)
        slot = self.bank.ring.target
        self._write_mask(slot, mask)
        self.io.copy(self.bank.features[slot].reshape(*self.staged_features.shape), self.staged_features)
        self.bank.ring.advance()

    def step(self, features: np.ndarray | DeviceTensor) -> np.ndarray:
        """Soft mask (K+1, h, w) of a new frame (downloaded), which then enters the memory."""
        soft = np.empty((self.num_classes, self.h, self.w), np.float32)
        self._run(features, soft_out=soft, commit=True)
        return soft

    def step_to_labels(self, features: np.ndarray | DeviceTensor, labels: LabelSpec, lut: np.ndarray,
                       out: np.ndarray, probs: np.ndarray | None = None) -> tuple[float, float]:
        """One run: propagate, remember, and write the label map (object ids via ``lut``) into
        ``out``; the soft mask comes down only into ``probs``. Returns (run ms, 0): the label map
        is made in the same run."""
        if labels != self.spec.labels or out.shape != self.out_hw:
            raise InputError(f"this propagation graph makes {self.out_hw} label maps for {self.spec.labels}, "
                             f"not {out.shape} for {labels}")
        t0 = time.perf_counter()
        self._run(features, soft_out=probs, labels_out=out, lut=lut, commit=True)
        return (time.perf_counter() - t0) * 1e3, 0.0

    def add_objects(self, n: int = 1) -> None:
        """New object channels, zero in every stored frame (as ``MemoryBank.add_objects``)."""
        self.bank.set_masks(grow_mask_channels(self.bank.host_masks(), n))
        self._scratch(self.num_classes)

    def remove_object(self, k: int) -> None:
        """Drop object channel ``k``; its mass joins the background (as ``MemoryBank.remove_object``)."""
        self.bank.set_masks(drop_mask_channel(self.bank.host_masks(), k))
        self._scratch(self.num_classes)

    # -- the run -------------------------------------------------------------------------------------
    def _bind_query(self, binding: Any, features: np.ndarray | DeviceTensor) -> None:
        want = (self.channels, self.h, self.w)
        if features.shape != want:
            raise InputError(f"features are {tuple(features.shape)}, expected {want}")
        if isinstance(features, DeviceTensor):
            self.io.bind(binding, "query", features.reshape(1, *want))
            return
        if not np.isfinite(features).all():
            raise InputError("propagation: frame features contain NaN or infinity")
        self.io.bind_host_input(binding, "query", np.asarray(features, np.float32).reshape(1, *want))

    def _run(self, features: np.ndarray | DeviceTensor, *, soft_out: np.ndarray | None, commit: bool,
             labels_out: np.ndarray | None = None, lut: np.ndarray | None = None) -> None:
        """One run of the graph on the filled slots. ``commit``: the frame enters the ring (its mask
        and features written into the slot being replaced), else they go to the staging tensors."""
        bank, io, spec = self.bank, self.io, self.spec
        if not len(bank):
            raise InputError("Propagator.predict() before start()")
        filled = len(bank)
        binding = self.engine.io_binding()
        self._bind_query(binding, features)
        io.bind(binding, "bank_features", bank.features.rows(0, filled))
        io.bind(binding, "bank_masks", bank.masks.rows(0, filled))
        if self._weights is not None:
            io.bind(binding, "head_weights", self._weights)
        if spec.labels is not None:
            self._bind_label_inputs(binding, lut)
        target = bank.ring.target if commit and spec.capacity > 0 else None
        mask_to = bank.masks[target].reshape(*self.staged_mask.shape) if target is not None else self.staged_mask
        io.bind(binding, "soft_hwk", mask_to, output=True)
        direct = target is not None and target >= filled  # the slot is not read by this run
        io.bind(binding, "features", bank.features[target].reshape(*self.staged_features.shape) if direct
                else self.staged_features, output=True)
        if soft_out is not None:
            io.bind_host_output(binding, "soft", soft_out)
        else:
            io.bind(binding, "soft", self.soft, output=True)
        if labels_out is not None:
            io.bind_host_output(binding, "labels", labels_out)
        if self.threshold is not None:
            io.bind(binding, "mag_threshold", self.threshold, output=True)
        self.engine.run_binding(binding)
        if target is not None:
            if not direct:
                io.copy(bank.features[target].reshape(*self.staged_features.shape), self.staged_features)
            bank.ring.advance()

    def _bind_label_inputs(self, binding: Any, lut: np.ndarray | None) -> None:
        if self._rows is None:
            raise InputError("this propagator was made without a frame size: it cannot make label maps")
        lut = np.arange(256, dtype=np.int32) if lut is None else np.asarray(lut).astype(np.int32)
        if self._lut_host is None or not np.array_equal(lut, self._lut_host):  # objects changed: upload
            self.io.write(self._lut, lut)
            self._lut_host = lut
        self.io.bind(binding, "rows", self._rows)
        self.io.bind(binding, "cols", self._cols)
        self.io.bind(binding, "lut", self._lut)

    def _adapt_weights(self, features: np.ndarray | DeviceTensor, onehot: np.ndarray) -> None:
        """Adaptive head weights (:mod:`diffvos.runtime.attention`): each head alone propagates the
        first mask onto the first frame; its weight follows the IoU of the result with the mask."""
        from diffvos.runtime.attention import grid_object_iou, weights_from_scores

        reference = onehot.argmax(axis=0)
        scores = []
        for head in range(self.spec.heads):
            alone = np.zeros(self.spec.heads, np.float32)
            alone[head] = 1.0
            self.io.write(self._weights, alone)
            soft = np.empty((self.num_classes, self.h, self.w), np.float32)
            self._run(features, soft_out=soft, commit=False)
            scores.append(grid_object_iou(soft.argmax(axis=0), reference, self.num_classes))
        self.head_scores = np.asarray(scores)
        self.weights = weights_from_scores(self.head_scores)
        self.io.write(self._weights, self.weights.astype(np.float32))

