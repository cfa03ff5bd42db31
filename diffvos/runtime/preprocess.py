"""Frame preprocessing (METHOD.md section 1.1): BGR->RGB, resize, scale to the graph's range."""

from __future__ import annotations

import cv2
import numpy as np

from diffvos.runtime.bundle import Manifest, Preprocess
from diffvos.runtime.errors import InputError


def method_size(frame_hw: tuple[int, int], short_side: int, multiple: int) -> tuple[int, int]:
    """Short side to ``short_side``, each side floored to ``multiple`` (854×480 -> 832×480)."""
    h, w = frame_hw
    scale = short_side / min(h, w)
    th = max(multiple, int(h * scale) // multiple * multiple)
    tw = max(multiple, int(w * scale) // multiple * multiple)
    return th, tw


def input_size(manifest: Manifest, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The graph input size for frames of ``frame_hw``: the bundle's fixed size, or METHOD's rule."""
    if not manifest.dynamic:
        assert manifest.height is not None and manifest.width is not None
        return manifest.height, manifest.width
    p = manifest.preprocess
    th, tw = method_size(frame_hw, p.short_side, p.multiple)
    if manifest.min_size and manifest.max_size:
        (lh, lw), (uh, uw) = manifest.min_size, manifest.max_size
        if not (lh <= th <= uh and lw <= tw <= uw):
            raise InputError(
                f"frames of {frame_hw[1]}x{frame_hw[0]} map to {tw}x{th}, outside the bundle's dynamic "
                f"range {lw}x{lh} .. {uw}x{uh}; re-export with a wider --min-size/--max-size"
            )
    return th, tw


def to_model_input(bgr: np.ndarray, size_hw: tuple[int, int], p: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HxWx3 BGR frame -> float32 [3,H,W] x_0 in the graph's range (``out`` reused if given)."""
    th, tw = size_hw
    if bgr.shape[:2] != (th, tw):
        interp = cv2.INTER_AREA if bgr.shape[0] > th else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, (tw, th), interpolation=interp)
    img = bgr[:, :, ::-1] if p.color == "RGB" else bgr
    if out is None:
        out = np.empty((3, th, tw), np.float32)
    np.multiply(img.transpose(2, 0, 1), np.float32(p.scale), out=out, casting="unsafe")
    out += np.float32(p.offset)
    if p.mean is not None and p.std is not None:
        out -= np.asarray(p.mean, np.float32)[:, None, None]
        out /= np.asarray(p.std, np.float32)[:, None, None]
    return out
