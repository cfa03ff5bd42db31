"""Fixed-size memory of context frames for label propagation (METHOD.md section 2).

The memory holds the permanent first frame plus a FIFO of the last ``capacity`` predicted frames.
Everything is preallocated at construction: pushing a frame writes into a ring slot, so a long
video neither allocates per frame nor grows. Features are stored L2-normalised along the channel
axis, channel-last ``(slot, h, w, C)`` so that a rectangular key region of one frame is a cheap
strided view for the propagation kernel; float16 storage halves the footprint (float32 reproduces
the reference exactly). Masks are float32 ``(slot, h, w, K+1)``.

Slot 0 is the first frame; slots ``1..capacity`` form the ring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffvos.errors import InputError

_EPS = 1e-12  # as torch.nn.functional.normalize


def to_hwc_into(features_chw: np.ndarray, out_hwc: np.ndarray, normalise: bool = True) -> None:
    """Write ``features`` (C, h, w) into ``out`` (h, w, C): L2-normalised along C, or as they are
    (raw query/key projections of an attention bundle, whose dot product is the attention logit)."""
    if normalise:
        l2_normalise_into(features_chw, out_hwc)
    else:
        out_hwc.reshape(-1, features_chw.shape[0])[...] = features_chw.reshape(features_chw.shape[0], -1).T


def l2_normalise_into(features_chw: np.ndarray, out_hwc: np.ndarray) -> None:
    """Write ``features`` (C, h, w) L2-normalised along C into ``out`` (h, w, C), any float dtype."""
    c = features_chw.shape[0]
    src = features_chw.reshape(c, -1).astype(np.float32, copy=False)
    norm = np.sqrt(np.einsum("ci,ci->i", src, src))
    np.maximum(norm, _EPS, out=norm)
    out_hwc.reshape(-1, c)[...] = (src / norm).T


class RingIndex:
    """Which slot holds what in a first frame + FIFO memory of ``capacity`` frames: slot 0 is the
    first frame, slots 1..capacity the ring, filled 1, 2, ... in order and then overwritten oldest
    first (so while filling, the used slots are always the prefix 0..len-1). Shared by the numpy
    bank here and the device bank of :mod:`diffvos.runtime.device_step`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        self.has_first = False
        self.count = 0  # frames in the ring
        self.next = 0  # ring position (0-based) the next push writes

    def __len__(self) -> int:
        """Context frames held: the first frame (if set) plus the ring's frames."""
        return int(self.has_first) + self.count

    @property
    def target(self) -> int:
        """The slot the next push writes."""
        return 1 + self.next

    def advance(self) -> None:
        """Record a push into :attr:`target`."""
        self.next = (self.next + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def context_slots(self) -> np.ndarray:
        """Slot indices of the context frames: first frame, then the ring oldest to newest."""
        if not self.has_first:
            return np.zeros(0, np.intp)
        oldest = (self.next - self.count) % max(self.capacity, 1)
        ring = (oldest + np.arange(self.count)) % max(self.capacity, 1) + 1
        return np.concatenate(([0], ring)).astype(np.intp)


def grow_mask_channels(masks: np.ndarray, n: int) -> np.ndarray:
    """Stored masks (..., K+1) with ``n`` more channels, zero everywhere (objects appearing mid-video)."""
    if n < 1:
        raise InputError(f"memory bank: add_objects({n}) needs n >= 1")
    grown = np.zeros(masks.shape[:-1] + (masks.shape[-1] + n,), np.float32)
    grown[..., : masks.shape[-1]] = masks
    return grown


def drop_mask_channel(masks: np.ndarray, k: int) -> np.ndarray:
    """Stored masks (..., K+1) without object channel ``k`` (1..K), whose mass joins the background."""
    if not 1 <= k < masks.shape[-1]:
        raise InputError(f"memory bank: object {k} does not exist (objects are 1..{masks.shape[-1] - 1})")
    masks[..., 0] += masks[..., k]
    return np.ascontiguousarray(np.delete(masks, k, axis=-1))


class RingBank:
    """What a memory bank answers from its ``ring`` (:class:`RingIndex`) and its two arrays,
    ``features`` (N+1, h, w, C) and ``masks`` (N+1, h, w, K+1): host arrays in
    :class:`MemoryBank`, device tensors in :class:`~diffvos.runtime.device_step.DeviceBank`."""

    ring: RingIndex
    features: Any
    masks: Any

    def __len__(self) -> int:
        """Context frames held: the first frame (if set) plus the ring's frames."""
        return len(self.ring)

    def context_slots(self) -> np.ndarray:
        """Slot indices of the context frames: first frame, then the ring oldest to newest."""
        return self.ring.context_slots()

    @property
    def num_classes(self) -> int:
        """Mask channels, background included (K+1)."""
        return self.masks.shape[-1]

    @property
    def nbytes(self) -> int:
        return self.features.nbytes + self.masks.nbytes


class MemoryBank(RingBank):
    """First frame + ring of the last ``capacity`` frames, preallocated."""

    def __init__(
        self,
        h: int,
        w: int,
        channels: int,
        num_classes: int,
        capacity: int = 28,
        feature_dtype: type = np.float16,
        normalise: bool = True,
    ) -> None:
        if min(h, w, channels, num_classes) < 1 or capacity < 0:
            raise InputError(f"memory bank: bad shape h={h} w={w} C={channels} classes={num_classes} N={capacity}")
        self.h, self.w, self.channels, self.capacity = h, w, channels, capacity
        self.normalise = normalise  # False: features are stored as given (attention keys)
        self.feature_dtype = np.dtype(feature_dtype)
        if self.feature_dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise InputError(f"memory bank: feature_dtype must be float16 or float32, not {self.feature_dtype}")
        self.features = np.zeros((capacity + 1, h, w, channels), self.feature_dtype)
        self.masks = np.zeros((capacity + 1, h, w, num_classes), np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget everything (the arrays are kept)."""
        self.ring = RingIndex(self.capacity)

    def _check(self, features: np.ndarray, mask: np.ndarray) -> None:
        want_f = (self.channels, self.h, self.w)
        want_m = (self.num_classes, self.h, self.w)
        if features.shape != want_f:
            raise InputError(f"memory bank: features are {features.shape}, expected {want_f}")
        if mask.shape != want_m:
            raise InputError(f"memory bank: mask is {mask.shape}, expected {want_m}")

    def _write(self, slot: int, features: np.ndarray, mask: np.ndarray, normalised: bool) -> None:
        if normalised:  # already (h, w, C) unit vectors
            self.features[slot] = features
        else:
            self._check(features, mask)
            to_hwc_into(features, self.features[slot], self.normalise)
        self.masks[slot] = np.moveaxis(mask, 0, -1)

    def set_first(self, features: np.ndarray, mask: np.ndarray) -> None:
        """Store the permanent first frame (C, h, w) with its mask (K+1, h, w); empties the ring."""
        self.reset()
        self._write(0, features, mask, normalised=False)
        self.ring.has_first = True

    def push(self, features: np.ndarray, mask: np.ndarray, normalised_hwc: bool = False) -> None:
        """Append a frame to the FIFO, overwriting the oldest once ``capacity`` frames are held.

        ``normalised_hwc=True`` takes features already unit-normalised in (h, w, C) layout (the
        propagator's query buffer) and skips the normalisation.
        """
        if not self.ring.has_first:
            raise InputError("memory bank: push() before set_first()")
        if self.capacity == 0:
            return
        if normalised_hwc:
            if features.shape != (self.h, self.w, self.channels) or mask.shape[0] != self.num_classes:
                raise InputError(f"memory bank: features {features.shape} / mask {mask.shape} do not fit")
        self._write(self.ring.target, features, mask, normalised_hwc)
        self.ring.advance()

    def repeat_first(self, n: int) -> None:
        """Push ``n`` copies of the first frame's entry (benchmarks: a full memory from one frame)."""
        for _ in range(n):
            self.push(self.features[0].copy(), np.moveaxis(self.masks[0], -1, 0).copy(), normalised_hwc=True)

    def add_objects(self, n: int = 1) -> None:
        """Append ``n`` object channels (rare: an object appears mid-video).

        The new channels are zero in every stored frame, the first frame included: memory holds
        no evidence for the new object until the caller pushes a frame whose mask contains it.
        (Past frames keep marking that region as background; the annotated frame enters the FIFO
        through ``push`` and leaves it after ``capacity`` frames like any other.)
        """
        self.masks = grow_mask_channels(self.masks, n)

    def remove_object(self, k: int) -> None:
        """Drop object channel ``k`` (1..K); its mass moves to the background channel.

        Every stored mask keeps summing to what it summed before, so the removed object's
        region is read as background by later frames; channels above ``k`` shift down by one.
        """
        self.masks = drop_mask_channel(self.masks, k)
