"""Overlay video: frames with the mask blended in palette colours and object contours drawn.

The mp4 is written under a temporary name next to its destination and renamed into place on
``close()``, so a crash or error never leaves a truncated video at the requested path.
The MPEG-4 part 2 encoder ('mp4v') only takes even sizes: an odd height or width is padded by one
replicated row/column.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

from diffvos.errors import OutputError
from diffvos.io.atomic import current_umask
from diffvos.io.masks import DAVIS_PALETTE


def blend_overlay(
    bgr: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
    contours: bool = True,
) -> np.ndarray:
    """A copy of ``bgr`` with every object pixel mixed ``alpha`` with its palette colour (RGB
    palette, DAVIS default) and each object's outline drawn in its colour; background untouched."""
    import cv2

    if labels.shape[:2] != bgr.shape[:2]:
        raise ValueError(f"labels {labels.shape[:2]} and frame {bgr.shape[:2]} differ in size")
    pal = DAVIS_PALETTE if palette is None else np.asarray(palette, np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    out = np.ascontiguousarray(bgr).copy()
    fg = (labels > 0).view(np.uint8)
    if fg.any():
        lut = np.ascontiguousarray(pal[:, ::-1]).reshape(256, 1, 3)  # RGB palette -> BGR LUT
        colour = cv2.LUT(cv2.merge([labels, labels, labels]), lut)
        mixed = cv2.addWeighted(out, 1.0 - alpha, colour, alpha, 0.0)  # rounded, saturated
        out = cv2.copyTo(mixed, fg, out)
    if contours:
        thickness = max(1, round(min(labels.shape[:2]) / 240))
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))  # np.unique sorts: slow
        for obj in present[present > 0]:
            found, _ = cv2.findContours((labels == obj).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            colour = tuple(int(c) for c in pal[obj][::-1])
            cv2.drawContours(out, found, -1, colour, thickness, lineType=cv2.LINE_AA)
    return out


class OverlayWriter:
    """mp4 writer for overlays; use as a context manager or call ``close()`` / ``abort()``."""

    fourcc = "mp4v"

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: tuple[int, int],
        palette: np.ndarray | None = None,
        alpha: float = 0.5,
    ) -> None:
        import cv2

        self.path = Path(path)
        if self.path.is_dir():
            raise OutputError("the overlay video path is a folder; give a file name such as overlay.mp4", self.path)
        self.size = (int(size[0]), int(size[1]))  # (H, W) of the frames given to write()
        self.palette = palette
        self.alpha = alpha
        self.frames = 0
        h, w = self.size
        self._pad = (h % 2, w % 2)
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix or ".mp4", dir=parent)
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it private; the video is an ordinary file
            os.close(fd)
        except OSError as exc:
            raise OutputError(f"cannot write the overlay video here ({exc.strerror})", parent) from exc
        self._tmp = Path(tmp)
        self._writer = cv2.VideoWriter(
            str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), float(fps), (w + self._pad[1], h + self._pad[0])
        )
        if not self._writer.isOpened():
            self._cleanup()
            raise OutputError(
                f"cannot open a video writer (codec {self.fourcc!r} or container {self.path.suffix or '(none)'!r} "
                "unavailable in this OpenCV build; use a .mp4 path)",
                self.path,
            )

    def write(self, bgr: np.ndarray, labels: np.ndarray) -> None:
        if self._writer is None:
            raise RuntimeError("OverlayWriter is closed")
        if bgr.shape[:2] != self.size:
            raise ValueError(f"frame is {bgr.shape[1]}x{bgr.shape[0]}, overlay is {self.size[1]}x{self.size[0]}")
        img = blend_overlay(bgr, labels, self.palette, self.alpha)
        if any(self._pad):
            img = np.pad(img, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        self._writer.write(img)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and rename it into place."""
        if self._writer is None:
            return self.path
        self._writer.release()
        self._writer = None
        try:
            if self._tmp.stat().st_size == 0:
                raise OutputError("the video encoder wrote nothing", self.path)
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._cleanup()
            raise OutputError(f"cannot move the overlay video into place ({exc.strerror})", self.path) from exc
        except BaseException:
            self._cleanup()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the partial video; the destination is left as it was."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self._tmp.unlink()

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
