"""Video and mask input/output in one import (frames.py, masks.py, overlay.py hold the code)."""

from __future__ import annotations

from diffvos.runtime.frames import (
    DEFAULT_FOLDER_FPS,
    IMAGE_SUFFIXES,
    FolderFrames,
    Frame,
    FrameSource,
    VideoFrames,
    natural_key,
    open_frames,
)
from diffvos.runtime.masks import (
    DAVIS_PALETTE,
    MaskInfo,
    MaskWriter,
    ObjectMap,
    check_mask_size,
    davis_palette,
    encode_indexed_png,
    read_mask,
    resize_labels,
)
from diffvos.runtime.overlay import OverlayWriter, blend_overlay

__all__ = [
    "DAVIS_PALETTE",
    "DEFAULT_FOLDER_FPS",
    "IMAGE_SUFFIXES",
    "FolderFrames",
    "Frame",
    "FrameSource",
    "MaskInfo",
    "MaskWriter",
    "ObjectMap",
    "OverlayWriter",
    "VideoFrames",
    "blend_overlay",
    "check_mask_size",
    "davis_palette",
    "encode_indexed_png",
    "natural_key",
    "open_frames",
    "read_mask",
    "resize_labels",
]
