"""Frame preprocessing (METHOD.md section 1.1): resize, channel order, scale to the graph's range."""

from __future__ import annotations

import cv2
import numpy as np

from diffvos.bundle import Preprocess


def resize_frame(frame: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The uint8 frame at the model input size (area averaging down, bilinear up; as is when it fits)."""
    th, tw = size_hw
    if frame.shape[:2] == (th, tw):
        return frame
    interp = cv2.INTER_AREA if frame.shape[0] > th else cv2.INTER_LINEAR
    return cv2.resize(frame, (tw, th), interpolation=interp)


def to_model_input(frame: np.ndarray, size_hw: tuple[int, int], p: Preprocess, color: str = "BGR",
                   out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HxWx3 frame in channel order ``color`` -> float32 [3,H,W] x_0 in the graph's range.

    The channel order is changed once, only where the frame's order differs from the graph's
    (``p.color``); ``out`` is reused when given.
    """
    th, tw = size_hw
    frame = resize_frame(frame, size_hw)
    img = frame[:, :, ::-1] if p.color != color else frame
    if out is None:
        out = np.empty((3, th, tw), np.float32)
    np.multiply(img.transpose(2, 0, 1), np.float32(p.scale), out=out, casting="unsafe")
    out += np.float32(p.offset)
    if p.mean is not None and p.std is not None:
        out -= np.asarray(p.mean, np.float32)[:, None, None]
        out /= np.asarray(p.std, np.float32)[:, None, None]
    return out
