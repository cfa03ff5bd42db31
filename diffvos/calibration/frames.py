"""Frame sampling for calibration: evenly across videos and frame folders, with held-out frames.

Sources are opened with the runtime's I/O layer (:func:`diffvos.io.frames.open_frames`), so
calibration sees the frames in the order tracking does (natural order, EXIF orientation ignored,
the same suffixes). Calibration frames are spread evenly over the concatenation of all sources;
the held-out frames used for the accuracy report sit half-way between them, so they are never
calibration frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from diffvos.errors import InputError
from diffvos.io.frames import FrameSource, open_frames


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
        self.sources: list[FrameSource] = [open_frames(p) for p in paths]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def frames(self, indices: Iterable[int]) -> Iterator[np.ndarray]:
        """BGR frames at the global ``indices``, in increasing order, each source read once."""
        wanted = sorted(set(int(i) for i in indices))
        for k, source in enumerate(self.sources):
            lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
            local = [i - lo for i in wanted if lo <= i < hi]
            found = 0
            for frame in source.select(local):
                found += 1
                yield frame.bgr
            if found < len(local):
                raise InputError(f"only {found} of the {len(local)} frames sampled from it decoded "
                                 f"(the container announced {len(source)} frames)", source.path)
