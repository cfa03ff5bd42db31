"""Dataset layouts: which videos a root holds, their frames and their annotations.

* DAVIS (2016/2017): ``JPEGImages/<resolution>/<video>/*.jpg`` and
  ``Annotations/<resolution>/<video>/*.png``; semi-supervised: every object is in the first
  frame's mask (later annotations, present in trainval, are ground truth and not used).
* YouTube-VOS and MOSE: ``JPEGImages/<video>/*.jpg`` and ``Annotations/<video>/*.png``; an
  object's first mask is in the annotation of the frame where it first appears, which may be a
  later frame (YouTube-VOS keeps a ``meta.json`` beside them). Every annotation is used: ids not
  tracked yet are added on that frame (``Session.step(frame, mask=..., object_ids=new)``).

A root may also be the parent of one split (``valid/JPEGImages``): give the split folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffvos.errors import InputError
from diffvos.io.frames import natural_key

DAVIS, YOUTUBE_VOS, MOSE = "davis", "youtube-vos", "mose"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Video:
    """One video of a dataset: its frame folder and annotation files by frame stem."""

    name: str
    frames: Path
    annotations: dict[str, Path] = field(default_factory=dict)  # frame stem -> label map PNG
    first_only: bool = False  # DAVIS: only the first frame's annotation starts the objects

    def to_dict(self) -> dict:
        return {"name": self.name, "frames": str(self.frames),
                "annotations": {k: str(v) for k, v in self.annotations.items()}, "first_only": self.first_only}

    @classmethod
    def from_dict(cls, d: dict) -> "Video":
        return cls(d["name"], Path(d["frames"]), {k: Path(v) for k, v in d["annotations"].items()}, d["first_only"])


@dataclass
class Dataset:
    kind: str
    root: Path
    videos: list[Video]


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
            if p.is_file() and p.suffix.lower() in suffixes}


def detect(root: str | Path, resolution: str = "480p") -> Dataset:
    """The layout of ``root`` and its videos (sorted by name), or an InputError naming what is missing."""
    root = Path(root)
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not root.is_dir():
        raise InputError("dataset root does not exist" if not root.exists() else "dataset root is not a folder", root)
    if not images.is_dir() or not annotations.is_dir():
        splits = [p.name for p in root.iterdir() if (p / "JPEGImages").is_dir()] if root.is_dir() else []
        hint = f"; it has split folders {', '.join(sorted(splits))}: give one of them" if splits else ""
        raise InputError(f"not a DAVIS / YouTube-VOS / MOSE root (no JPEGImages and Annotations folders){hint}", root)
    if (images / resolution).is_dir() and (annotations / resolution).is_dir():
        kind, images, annotations = DAVIS, images / resolution, annotations / resolution
    else:
        kind = YOUTUBE_VOS if (root / "meta.json").is_file() or (root.parent / "meta.json").is_file() else MOSE
    videos = []
    for folder in sorted((p for p in images.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        ann_dir = annotations / folder.name
        if not ann_dir.is_dir():
            raise InputError(f"video '{folder.name}' has no annotation folder", ann_dir)
        anns = _stems(ann_dir, (".png",))
        frames = _stems(folder, IMAGE_SUFFIXES)
        if not frames:
            raise InputError(f"video '{folder.name}' has no frames", folder)
        if not anns:
            raise InputError(f"video '{folder.name}' has no annotation PNG (the first mask is needed)", ann_dir)
        unknown = sorted(set(anns) - set(frames), key=natural_key)
        if unknown:
            raise InputError(f"video '{folder.name}': annotation(s) {', '.join(unknown[:3])} name no frame", ann_dir)
        first_frame = next(iter(frames))
        if kind == DAVIS:
            if first_frame not in anns:
                raise InputError(f"video '{folder.name}': no annotation for the first frame {first_frame}", ann_dir)
            anns = {first_frame: anns[first_frame]}
        videos.append(Video(folder.name, folder, anns, first_only=kind == DAVIS))
    if not videos:
        raise InputError("the dataset has no videos", images)
    return Dataset(kind, root, videos)
