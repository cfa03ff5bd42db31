"""Masks to and from the feature grid (METHOD.md section 2, first paragraph and step 8).

Resampling is written out with explicit index / weight matrices so that it matches the
reference's PIL ``NEAREST`` resize exactly and torch's bilinear ``F.interpolate(...,
align_corners=False)`` to float rounding, without importing either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from diffvos.errors import InputError


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index, exactly as PIL ``Image.resize(..., NEAREST)``.

    Nominally floor((i + 0.5) * in / out), but PIL accumulates the position by repeated float64
    addition of in/out, which lands on the other side of an integer where (i + 0.5) * in / out
    is exactly an integer (e.g. 160 -> 170, i = 8); a sequential cumsum reproduces it.
    (cv2.INTER_NEAREST uses floor(i * in / out) and differs more.)
    """
    step = in_size / out_size
    pos = np.full(out_size, step, dtype=np.float64)
    if out_size:
        pos[0] = step * 0.5
    src = np.cumsum(pos).astype(np.intp)  # add.accumulate is sequential, like PIL's loop
    return np.minimum(src, in_size - 1)


def resize_nearest(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D map to ``out_hw`` (PIL NEAREST semantics)."""
    h, w = labels.shape
    return labels[nearest_indices(h, out_hw[0])[:, None], nearest_indices(w, out_hw[1])[None, :]]


def labels_to_onehot(labels: np.ndarray, grid_hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """First-frame label map (H, W) of ids 0..K -> one-hot (num_classes = K+1, h, w) float32.

    The map is resized straight from its own size to the feature grid (nearest), as the
    reference does, so small objects may vanish at the grid: the caller decides what to do then.
    """
    if labels.ndim != 2:
        raise InputError(f"mask must be a 2-D label map, got shape {labels.shape}")
    if labels.size and (int(labels.max()) >= num_classes or int(labels.min()) < 0):
        raise InputError(f"mask has ids {int(labels.min())}..{int(labels.max())}, expected 0..{num_classes - 1}")
    small = resize_nearest(labels, grid_hw)
    return (small[None, :, :] == np.arange(num_classes)[:, None, None]).astype(np.float32)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) interpolation matrix of torch's bilinear resize with align_corners=False.

    Source coordinate (i + 0.5) * in / out - 0.5, clamped at 0; the upper neighbour is clamped
    at in - 1. Computed in float32 like torch's CPU kernel.
    """
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    np.maximum(src, 0, out=src)
    i0 = np.minimum(src.astype(np.intp), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def upsample_bilinear(soft: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) bilinear, align_corners=False, separable (two small matmuls)."""
    _, h, w = soft.shape
    my = bilinear_matrix(h, out_hw[0])
    mx = bilinear_matrix(w, out_hw[1])
    return my @ (soft.astype(np.float32, copy=False) @ mx.T)


def minmax_normalise(maps: np.ndarray) -> np.ndarray:
    """Per channel: (x - min) / (max - min), in place; a channel whose max is <= 0 is left as is.

    A constant positive channel (max == min > 0) becomes 0: it carries no spatial information
    (the reference would divide 0 by 0 there).
    """
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    for c in np.flatnonzero(hi > 0):
        flat[c] -= lo[c]
        span = hi[c] - lo[c]
        if span > 0:
            flat[c] /= span
    return maps


def soft_to_labels(
    soft: np.ndarray,
    stride: int,
    out_hw: tuple[int, int],
    scaled_hw: tuple[int, int] | None = None,
    lut: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Soft mask (K+1, h, w) -> uint8 label map (H, W) at the original frame size.

    Bilinear upsampling to the model input size (``scaled_hw``; default h*stride x w*stride),
    per-channel min-max normalisation, argmax over channels (first channel on exact ties), then
    a nearest resize to ``out_hw`` (METHOD.md section 2, step 8). ``lut`` (256 uint8) maps
    channels to the caller's object ids on the small map before the resize; the result is
    written once, into ``out`` when given.
    """
    if soft.ndim != 3:
        raise InputError(f"soft mask must be (K+1, h, w), got shape {soft.shape}")
    _, h, w = soft.shape
    up_hw = scaled_hw if scaled_hw is not None else (h * stride, w * stride)
    up = minmax_normalise(upsample_bilinear(soft, up_hw))
    labels = np.argmax(up, axis=0).astype(np.uint8)
    if lut is not None:
        np.take(lut, labels, out=labels, mode="clip")
    if out is None:
        out = np.empty(out_hw, np.uint8)
    if labels.shape == tuple(out_hw):
        np.copyto(out, labels)
    else:
        rows, cols = nearest_indices(labels.shape[0], out_hw[0]), nearest_indices(labels.shape[1], out_hw[1])
        np.take(labels[rows], cols, axis=1, out=out)
    return out


@dataclass(frozen=True)
class LabelSpec:
    """How a session's soft masks become its label maps (METHOD.md step 8): the feature stride and
    the model input size the soft mask is upsampled to before the nearest resize to the frame."""

    stride: int
    scaled_hw: tuple[int, int]

    def write(self, soft: np.ndarray, lut: np.ndarray, out: np.ndarray) -> np.ndarray:
        return soft_to_labels(soft, self.stride, out.shape, self.scaled_hw, lut, out)


class HostLabels:
    """``step_to_labels`` for propagators whose soft mask is on the host (the numpy kernels): the
    step, then :func:`soft_to_labels`. The graph kernel does both in one run on the device."""

    def step_to_labels(self, features: np.ndarray, labels: LabelSpec, lut: np.ndarray, out: np.ndarray,
                       probs: np.ndarray | None = None) -> tuple[float, float]:
        """Propagate one frame, write its label map (object ids via ``lut``) into ``out`` and, when
        given, its soft mask into ``probs``; returns (propagation ms, postprocessing ms)."""
        t0 = time.perf_counter()
        soft = self.step(features)  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        labels.write(soft, lut, out)
        if probs is not None:
            np.copyto(probs, soft)
        return (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
