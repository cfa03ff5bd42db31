"""A synthetic clip for the samples: coloured squares moving over a flat background.

Each object is (id, colour BGR, top-left at frame 0, velocity (dy, dx) per frame, size, first
frame it is visible). Returns BGR frames and the exact label map of every frame, so that the
samples (and their tests) can compare the tracker's output with the truth.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = (40, 120, 30)

# id, colour, (y0, x0), (dy, dx), size, appears at frame
OBJECTS = (
    (1, (0, 0, 255), (8, 8), (0, 2), 20, 0),
    (2, (255, 200, 0), (36, 70), (0, -2), 20, 0),
)


def clip(
    n: int = 12, height: int = 64, width: int = 96, objects=OBJECTS, background=BACKGROUND
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, truths): uint8 (H, W, 3) BGR frames and uint8 (H, W) label maps."""
    frames, truths = [], []
    for t in range(n):
        f = np.empty((height, width, 3), np.uint8)
        f[:] = background
        lab = np.zeros((height, width), np.uint8)
        for oid, colour, (y0, x0), (dy, dx), size, start in objects:
            if t < start:
                continue
            y, x = y0 + dy * t, x0 + dx * t
            ys, xs = slice(max(y, 0), max(y + size, 0)), slice(max(x, 0), max(x + size, 0))
            f[ys, xs] = colour
            lab[ys, xs] = oid
        frames.append(f)
        truths.append(lab)
    return frames, truths


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
