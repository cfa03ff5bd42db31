"""Frame sources: a video file or a folder of frames, decoded to BGR uint8, one frame at a time.

Everything that can be checked cheaply is checked when the source is opened (the path exists,
a video decodes its first frame, a folder's images all have one size — read from the image
headers only), so a caller can fail before writing any output.

Frame names: a folder's frames keep their file stem (``00000.jpg`` -> ``'00000'``); a video's
frames are numbered ``'00000'``, ``'00001'``, ... Output masks are named after them.

Folder order is *natural* order: runs of digits compare as numbers, so ``1.jpg, 2.jpg, 10.jpg``
come in that order (lexicographic order would put ``10`` before ``2``). For zero-padded names
(DAVIS: ``00000.jpg`` ...) both orders agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from diffvos.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FOLDER_FPS = 24.0

def _imread_flags() -> int:
    """Decode as stored: cv2 would otherwise rotate by the EXIF orientation tag, and the decoded
    size would disagree with the header size checked at open (and with masks drawn on raw pixels)."""
    import cv2

    return cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based position in the source
    name: str  # output stem: the file stem for folders, '%05d' of index for videos
    bgr: np.ndarray  # uint8 (H, W, 3), BGR order as OpenCV decodes it


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as integers: 'f2' < 'f10'. Ties broken by the raw name."""
    parts = re.split(r"(\d+)", name)
    key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.casefold()) for p in parts if p)
    return key, name


class FrameSource:
    """Iterable of ``Frame``; iterating again starts from the first frame."""

    path: Path
    size: tuple[int, int]  # (H, W)
    fps: float
    exact_length: bool  # False when len() is a container's estimate (videos)

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def select(self, indices: Iterable[int]) -> Iterator[Frame]:
        """The frames at ``indices``, in increasing order, each decoded once (a video is read
        sequentially up to the last index wanted)."""
        wanted = sorted(set(int(i) for i in indices))
        if not wanted:
            return
        for frame in self:
            if frame.index == wanted[0]:
                yield frame
                wanted.pop(0)
                if not wanted:
                    return

    def __repr__(self) -> str:
        h, w = self.size
        return f"{type(self).__name__}({str(self.path)!r}, {len(self)} frames, {w}x{h}, {self.fps:g} fps)"


class FolderFrames(FrameSource):
    """A folder of jpg/jpeg/png/bmp frames (DAVIS layout), read in natural name order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fps = DEFAULT_FOLDER_FPS
        self.exact_length = True
        files = [
            p
            for p in path.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ]
        if not files:
            raise InputError(f"no frames found (looked for {', '.join(IMAGE_SUFFIXES)} files)", path)
        files.sort(key=lambda p: natural_key(p.name))
        seen: dict[str, Path] = {}
        for p in files:
            if p.stem in seen:
                raise InputError(
                    f"two frames share the name {p.stem!r} ({seen[p.stem].name} and {p.name}); "
                    "their output masks would collide",
                    path,
                )
            seen[p.stem] = p
        self.files = files
        self.size = self._check_sizes(files)

    @staticmethod
    def _check_sizes(files: list[Path]) -> tuple[int, int]:
        """Read every header (not the pixels) so a bad or odd-sized frame fails before any output."""
        from PIL import Image, UnidentifiedImageError

        first: tuple[int, int] | None = None
        for p in files:
            try:
                with Image.open(p) as im:
                    w, h = im.size
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise InputError(f"cannot read this image ({exc})", p) from exc
            if first is None:
                first = (h, w)
            elif (h, w) != first:
                raise InputError(
                    f"frame is {w}x{h} but the first frame ({files[0].name}) is {first[1]}x{first[0]}; "
                    "all frames of a video must have one size",
                    p,
                )
        assert first is not None
        return first

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        return (self._read(i) for i in range(len(self.files)))

    def select(self, indices: Iterable[int]) -> Iterator[Frame]:
        return (self._read(i) for i in sorted(set(int(i) for i in indices)))

    def _read(self, i: int) -> Frame:
        import cv2

        p = self.files[i]
        bgr = cv2.imread(str(p), _imread_flags())
        if bgr is None:
            raise InputError("cannot decode this image", p)
        if bgr.shape[:2] != self.size:
            h, w = bgr.shape[:2]
            raise InputError(f"decoded as {w}x{h}, expected {self.size[1]}x{self.size[0]}", p)
        return Frame(i, p.stem, bgr)


class VideoFrames(FrameSource):
    """A video file decoded with OpenCV (FFmpeg backend).

    ``len()`` is the container's frame count (CAP_PROP_FRAME_COUNT), which for some files
    (variable frame rate, broken index) is an estimate: iteration yields the frames that actually
    decode, which may be a few more or fewer. When the container reports no count, the frames are
    counted by grabbing them (no pixel conversion) at open.
    """

    def __init__(self, path: Path) -> None:
        import cv2

        self.path = path
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise InputError("cannot open this video (unknown format, corrupt or empty file)", path)
            ok, first = cap.read()
            if not ok or first is None:
                raise InputError("no frame decodes from this video (empty or corrupt)", path)
            self.size = first.shape[:2]
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if np.isfinite(fps) and fps > 0 else DEFAULT_FOLDER_FPS
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.exact_length = False
            if count <= 0:
                count = 1
                while cap.grab():
                    count += 1
                self.exact_length = True
            self._count = count
        finally:
            cap.release()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise InputError("cannot open this video any more", self.path)
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                if bgr.shape[:2] != self.size:
                    h, w = bgr.shape[:2]
                    raise InputError(
                        f"frame {i} is {w}x{h}, the video started at {self.size[1]}x{self.size[0]}", self.path
                    )
                yield Frame(i, f"{i:05d}", bgr)
                i += 1
        finally:
            cap.release()


def open_frames(path: str | Path) -> FrameSource:
    """A video file or a folder of frames; raises InputError naming the file if it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise InputError("input not found (expected a video file or a folder of frames)", path)
    if path.is_dir():
        try:
            return FolderFrames(path)
        except PermissionError as exc:
            raise InputError(f"cannot list this folder ({exc.strerror})", path) from exc
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError("this is a single image; give a video file or a folder of frames", path)
    return VideoFrames(path)
