"""One video of a dataset through one session: the same per-frame path as ``diffvos track``
(``Session.step``), with objects added on the frame of their first annotation."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass

import numpy as np

from diffvos.config import SessionConfig
from diffvos.dataset.layout import Video
from diffvos.dataset.store import VideoStore
from diffvos.errors import InputError
from diffvos.io.frames import open_frames
from diffvos.io.masks import VOID, MaskWriter, read_label_map
from diffvos.runtime.session import Runtime


@dataclass
class VideoResult:
    name: str
    frames: int
    seconds: float
    objects: list[int]
    host: str

    def to_dict(self) -> dict:
        return asdict(self)


def track_one(runtime: Runtime, video: Video, store: VideoStore, config: SessionConfig | None = None) -> VideoResult:
    """Track ``video`` into ``store`` (published whole, with its marker, or not at all)."""
    t0 = time.perf_counter()
    source = open_frames(video.frames)
    height, width = source.size
    session = runtime.session(width, height, config)
    palette = None
    frames = 0
    try:
        with store.writing(video.name) as stage:
            writer = None
            for frame in source:
                mask, new = _annotation(video, frame.name, session, (height, width))
                if mask is not None and palette is None:
                    palette = mask[1]
                if writer is None:
                    writer = MaskWriter(stage, palette)
                if mask is not None and new:
                    labels = session.step(frame.bgr, mask=mask[0], object_ids=new)
                elif session.info.object_ids:
                    labels = session.step(frame.bgr)
                else:  # before the first object appears
                    labels = np.zeros((height, width), np.uint8)
                writer.write(frame.name, labels)
                frames += 1
            if not session.info.object_ids:
                raise InputError(f"video '{video.name}': no annotation marks any object", video.frames)
            result = VideoResult(video.name, frames, time.perf_counter() - t0, list(session.info.object_ids),
                                 f"{socket.gethostname()}:{os.getpid()}")
            store.finish(stage, result.to_dict())
    finally:
        session.close()
    return result


def _annotation(video: Video, stem: str, session, size: tuple[int, int]):
    """(label map, palette) of this frame's annotation and the ids it adds, or (None, [])."""
    path = video.annotations.get(stem)
    if path is None:
        return None, []
    labels, palette, _ = read_label_map(path)
    if labels.shape != size:
        raise InputError(f"annotation is {labels.shape[1]}x{labels.shape[0]}, the frames are {size[1]}x{size[0]}", path)
    labels[labels == VOID] = 0
    tracked = set(session.info.object_ids)
    new = [int(i) for i in np.flatnonzero(np.bincount(labels.ravel(), minlength=256)) if i and i not in tracked]
    return (labels, palette), new
