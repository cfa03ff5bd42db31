"""Frame sampling for calibration: evenly across videos and frame folders, with held-out frames.

Calibration frames are spread evenly over the concatenation of all sources; the held-out
frames used for the accuracy report sit half-way between them, so they are never calibration
frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffvos.runtime.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Source:
    path: Path
    count: int
    files: list[Path] | None = None  # frame folder; None for a video file

    def read(self, index: int) -> np.ndarray:
        import cv2

        if self.files is not None:
            img = cv2.imread(str(self.files[index]), cv2.IMREAD_COLOR)
            if img is None:
                raise InputError("unreadable image", self.files[index])
            return img
        cap = cv2.VideoCapture(str(self.path))
        try:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, img = cap.read()
        finally:
            cap.release()
        if not ok:
            raise InputError(f"cannot decode frame {index}", self.path)
        return img


def open_source(path: str | Path) -> Source:
    import cv2

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError("folder holds no image frames", path)
        return Source(path, len(files), files)
    if not path.is_file():
        raise InputError("no such video or frame folder", path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(path.parent, 1, [path])
    cap = cv2.VideoCapture(str(path))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    if count <= 0:
        raise InputError("not a readable video (no frames)", path)
    return Source(path, count)


def split_indices(total: int, num: int, heldout: int) -> tuple[list[int], list[int]]:
    """``num`` evenly spaced calibration indices in [0, total) and up to ``heldout`` distinct
    indices between them (never a calibration index)."""
    if total <= 0 or num <= 0:
        raise InputError("nothing to sample: no frames or --num-frames < 1")
    num = min(num, total)
    calib = sorted(set(np.linspace(0, total - 1, num).round().astype(int).tolist()))
    gaps = [(a + b) // 2 for a, b in zip(calib, calib[1:]) if b - a > 1]
    if not gaps and calib[-1] < total - 1:
        gaps = [total - 1]
    chosen = set(calib)
    gaps = [g for g in gaps if g not in chosen]
    if heldout > 0 and len(gaps) > heldout:
        gaps = [gaps[i] for i in np.linspace(0, len(gaps) - 1, heldout).round().astype(int)]
    return calib, sorted(set(gaps))[: max(heldout, 0)]


class FramePool:
    """All sources as one sequence of frames, addressable by a global index."""

    def __init__(self, paths: list[str | Path]) -> None:
        if not paths:
            raise InputError("no --frames given")
        self.sources = [open_source(p) for p in paths]
        self.offsets = np.cumsum([0] + [s.count for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, index: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[k].read(index - int(self.offsets[k]))
