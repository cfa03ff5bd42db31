"""Frame sources: a video file or a folder of frames, decoded to BGR uint8, one frame at a time.

Everything that can be checked cheaply is checked when the source is opened (the path exists,
a video decodes its first frame, a folder's images all have one size — read from the image
headers only), so a caller can fail before writing any output.

Frame names: a folder's frames keep their file stem (``00000.jpg`` -> ``'00000'``); a video's
frames are numbered ``'00000'``, ``'00001'``, ... Output masks are named after them.

Damaged input is never tracked silently: every decode runs with the native decoders' messages
captured (:mod:`diffvos.io.native_log`), and a frame they complain about, one that does not
decode, or a video that stops before the frame count its container lists, raises
:class:`~diffvos.errors.DecodeError` naming the file or frame. With ``skip_bad=True`` such frames
are left out and listed in ``source.skipped`` instead. :meth:`FrameSource.scan` decodes everything
once up front, so a command can refuse damaged input before it writes anything.

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

from diffvos.errors import DecodeError, InputError
from diffvos.io.native_log import capture_fd2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FOLDER_FPS = 24.0

def _imread_flags() -> int:
    """Decode as stored: cv2 would otherwise rotate by the EXIF orientation tag, and the decoded
    size would disagree with the header size checked at open (and with masks drawn on raw pixels)."""
    import cv2

    return cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True)
class BadFrame:
    index: int
    name: str
    reason: str

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "reason": self.reason}


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
    skip_bad: bool = False  # leave damaged frames out (listed in ``skipped``) instead of raising
    skipped: list[BadFrame]  # damaged frames left out by the last iteration (or scan)

    def scan(self) -> list[BadFrame]:
        """Decode every frame once (pixels dropped) and return the damaged ones; raises
        DecodeError at the first unless ``skip_bad``. Makes ``len()`` exact."""
        bad: list[BadFrame] = []
        for _ in self._frames(keep_pixels=False, bad=bad):
            pass
        return bad

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        return self._frames(keep_pixels=True, bad=self.skipped)

    def _frames(self, keep_pixels: bool, bad: list[BadFrame]) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _damaged(self, index: int, name: str, reason: str, path: Path, bad: list[BadFrame]) -> None:
        """Record a damaged frame (skip mode) or raise for it."""
        if not self.skip_bad:
            raise DecodeError(f"{reason}; use --skip-bad-frames to track the other frames", path, index)
        bad.append(BadFrame(index, name, reason))

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

    def __init__(self, path: Path, exclude: Iterable[str | Path] = (), skip_bad: bool = False) -> None:
        self.path = path
        self.fps = DEFAULT_FOLDER_FPS
        self.exact_length = True
        self.skip_bad = skip_bad
        self.skipped = []
        excluded = {Path(p).resolve() for p in exclude}
        files = [
            p
            for p in path.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
            and p.resolve() not in excluded  # the first mask kept beside its frames is no frame
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

    def _frames(self, keep_pixels: bool, bad: list[BadFrame]) -> Iterator[Frame]:
        for i in range(len(self.files)):
            frame = self._read(i, bad)
            if frame is not None:
                yield frame

    def select(self, indices: Iterable[int]) -> Iterator[Frame]:
        self.skipped = []
        frames = (self._read(i, self.skipped) for i in sorted(set(int(i) for i in indices)))
        return (f for f in frames if f is not None)

    def _read(self, i: int, bad: list[BadFrame]) -> Frame | None:
        import cv2

        p = self.files[i]
        with capture_fd2() as log:
            bgr = cv2.imread(str(p), _imread_flags())
        if bgr is None:
            why = log.summary()
            self._damaged(i, p.stem, "cannot decode this image" + (f" (decoder: {why})" if why else ""), p, bad)
            return None
        if log.problems():
            self._damaged(i, p.stem, f"damaged image (decoder: {log.summary()})", p, bad)
            return None
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

    def __init__(self, path: Path, skip_bad: bool = False) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.skipped = []
        with capture_fd2():  # FFmpeg's noise about a damaged file: the reads below judge it
            self._open(path)

    def _open(self, path: Path) -> None:
        import cv2

        cap = _capture(path)
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
            self._listed = count if not self.exact_length else 0  # frames the container promises
        finally:
            cap.release()

    def __len__(self) -> int:
        return self._count

    def _frames(self, keep_pixels: bool, bad: list[BadFrame]) -> Iterator[Frame]:
        with capture_fd2():
            cap = _capture(self.path)
        if not cap.isOpened():
            raise InputError("cannot open this video any more", self.path)
        try:
            i = 0
            while True:
                with capture_fd2() as log:
                    ok = cap.grab()
                    bgr = cap.retrieve()[1] if ok and keep_pixels else None
                name = f"{i:05d}"
                if not ok or (keep_pixels and bgr is None):
                    if i >= self._listed:
                        break  # the end
                    why = log.summary()
                    reason = (f"frame {i} does not decode though the container lists {self._listed} frames (the video "
                              "is damaged or cut short here)" + (f"; decoder: {why}" if why else ""))
                    self._damaged(i, name, reason, self.path, bad)
                elif log.problems():
                    self._damaged(i, name, f"frame {i} is damaged (decoder: {log.summary()})", self.path, bad)
                elif bgr is not None and bgr.shape[:2] != self.size:
                    h, w = bgr.shape[:2]
                    raise InputError(
                        f"frame {i} is {w}x{h}, the video started at {self.size[1]}x{self.size[0]}", self.path
                    )
                elif keep_pixels:
                    yield Frame(i, name, bgr)
                i += 1
        finally:
            cap.release()
        self._count, self.exact_length = max(i, self._count), True


def _capture(path: Path):
    """An OpenCV capture decoding on one thread: FFmpeg's frame threads print a damaged packet's
    messages late, which would blame the wrong frame (and differently from run to run)."""
    import cv2

    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])


def open_frames(path: str | Path, exclude: Iterable[str | Path] = (), skip_bad: bool = False) -> FrameSource:
    """A video file or a folder of frames; raises InputError naming the file if it cannot be used.

    ``exclude``: files that are not frames even if they lie in the folder (the first mask);
    ``skip_bad``: leave damaged frames out (listed in ``source.skipped``) instead of raising.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("input not found (expected a video file or a folder of frames)", path)
    if path.is_dir():
        try:
            return FolderFrames(path, exclude, skip_bad)
        except PermissionError as exc:
            raise InputError(f"cannot list this folder ({exc.strerror})", path) from exc
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError("this is a single image; give a video file or a folder of frames", path)
    return VideoFrames(path, skip_bad)
