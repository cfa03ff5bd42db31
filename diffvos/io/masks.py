"""Label masks in and out: the one reader of mask images (first masks, annotations and
predictions alike), the size check, and indexed-PNG writing.

Accepted mask images (``read_label_map`` decodes, keeping the DAVIS "void" value 255;
``read_mask`` reads a first mask: void is background and at least one object is needed):

* palette PNG (mode P, DAVIS-2017 / YouTube-VOS): the pixel index is the object id. The palette
  is kept for the output masks.
* greyscale PNG: only 0 and 255 is a binary mask, 255 = object 1 (DAVIS-2016); values all
  <= 127 or 255 are an index map saved without a palette (255 = void); anything else is
  thresholded at 127 (an anti-aliased binary mask).
* RGB(A) PNG: if every pixel is grey it is read as greyscale. Otherwise each distinct colour is an
  object: black is background; if every colour is in the DAVIS palette the DAVIS index is used
  (an indexed mask saved as RGB reads back with its ids), else colours get ids 1..n in sorted
  colour order and a palette is built from them. Alpha is ignored.

Output (``MaskWriter``): one indexed PNG (mode P) per frame holding the original object ids, with
the first mask's palette, or the DAVIS palette when the first mask had none (greyscale input
therefore comes out as index 1 = DAVIS red, the DAVIS-2017 convention, not as 0/255 greyscale).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffvos.errors import InputError, OutputError
from diffvos.io.atomic import check_writable_dir, write_bytes_atomic

VOID = 255  # DAVIS "void" index (object borders / ignored): background for the first mask


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL-VOC colour map, (256, 3) uint8: index bits spread over the RGB high bits."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[i] = (r, g, b)
    return pal


DAVIS_PALETTE = davis_palette()
DAVIS_PALETTE.setflags(write=False)


@dataclass
class MaskInfo:
    labels: np.ndarray  # uint8 (H, W): 0 background, object ids as in the file
    palette: np.ndarray | None  # (256, 3) uint8, None for greyscale input (write with DAVIS_PALETTE)
    object_ids: list[int]  # sorted, without 0
    path: Path | None = None
    kind: str = "palette"  # 'palette', 'grey', 'index' or 'rgb': how the file was interpreted

    @property
    def size(self) -> tuple[int, int]:
        return self.labels.shape[0], self.labels.shape[1]


def _full_palette(flat: list[int] | None) -> np.ndarray:
    pal = np.zeros((256, 3), np.uint8)
    if flat:
        arr = np.asarray(flat[: 256 * 3], np.uint8).reshape(-1, 3)
        pal[: len(arr)] = arr
    return pal


def _grey_labels(grey: np.ndarray) -> tuple[np.ndarray, str]:
    """A greyscale mask: 0/255 only is a binary mask (255 = object 1, DAVIS-2016); values all
    <= 127 or equal to 255 form an index map saved without a palette (255 = void); anything else
    is thresholded at 127."""
    if not grey.size:
        return grey.astype(np.uint8), "grey"
    present = np.flatnonzero(np.bincount(grey.ravel(), minlength=256))
    if set(present.tolist()) <= {0, VOID}:
        return (grey == VOID).astype(np.uint8), "grey"
    if np.all((present <= 127) | (present == VOID)):
        return grey.astype(np.uint8), "index"
    return (grey > 127).astype(np.uint8), "grey"


def _rgb_labels(rgb: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    if np.array_equal(r, g) and np.array_equal(g, b):
        labels, kind = _grey_labels(rgb[..., 0])
        return labels, None, kind
    code = (r << 16) | (g << 8) | b
    colours, inverse = np.unique(code, return_inverse=True)
    inverse = inverse.reshape(code.shape)
    davis_code = (DAVIS_PALETTE[:, 0].astype(np.int32) << 16) | (DAVIS_PALETTE[:, 1].astype(np.int32) << 8) | DAVIS_PALETTE[:, 2]
    davis_index = {int(c): i for i, c in enumerate(davis_code)}
    if all(int(c) in davis_index for c in colours):
        lut = np.array([davis_index[int(c)] for c in colours], np.uint8)
        return lut[inverse], DAVIS_PALETTE.copy(), "rgb"
    others = [int(c) for c in colours if c != 0]
    if len(others) > 254:
        raise InputError(
            f"mask has {len(others)} colours, too many for object labels (anti-aliased or saved as JPEG?)", path
        )
    lut = np.zeros(len(colours), np.uint8)
    pal = np.zeros((256, 3), np.uint8)
    next_id = 1
    for j, c in enumerate(colours):
        if c == 0:
            continue
        lut[j] = next_id
        pal[next_id] = ((c >> 16) & 255, (c >> 8) & 255, c & 255)
        next_id += 1
    return lut[inverse], pal, "rgb"


def read_label_map(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Decode a mask image as stored: (uint8 labels with void 255 kept, palette or None, kind).

    Used for annotations and predictions alike (evaluation keeps void); see the module docstring
    for the accepted kinds.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError("mask file not found" if not path.exists() else "mask is not a file", path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                labels = np.asarray(im.getchannel(0) if mode == "PA" else im, dtype=np.uint8).copy()
                return labels, _full_palette(im.getpalette()), "palette"
            if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
                return _rgb_labels(np.asarray(im.convert("RGB")), path)
            grey = np.asarray(im.getchannel(0) if mode in ("LA", "La") else im)  # L, LA, 1, I, I;16, F ...
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read this mask image ({exc})", path) from exc
    if mode == "1":
        grey = grey.astype(np.uint8) * VOID
    if grey.dtype.kind == "f":
        grey = np.rint(grey)
    if grey.size and int(grey.max()) > 255 and int(grey.max()) > 65535 // 2:
        grey = (grey > 65535 // 2).astype(np.uint8) * VOID  # 16-bit 0/65535 mask
    if grey.size and int(grey.max()) > 255:
        raise InputError(f"mask values go up to {int(grey.max())}; expected 8-bit labels", path)
    labels, kind = _grey_labels(grey.astype(np.uint8))
    return labels, None, kind


def read_mask(path: str | Path) -> MaskInfo:
    """Read the first frame's mask: void (255) is background, and at least one object is needed."""
    labels, palette, kind = read_label_map(path)
    labels[labels == VOID] = 0
    ids = [int(i) for i in np.flatnonzero(np.bincount(labels.ravel(), minlength=256)) if i != 0]
    if not ids:
        raise InputError("mask has no object (every pixel is background)", path)
    return MaskInfo(labels=labels, palette=palette, object_ids=ids, path=Path(path), kind=kind)


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize with PIL NEAREST semantics (source pixel floor((x + 0.5) * scale))."""
    import cv2

    h, w = hw
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def check_mask_size(mask: MaskInfo, frame_hw: tuple[int, int], resize: bool = False) -> np.ndarray:
    """The mask's labels at the frame size; a different size is an error unless ``resize``.

    Resizing may wipe out a tiny object; that is an error too (the object would silently vanish).
    """
    fh, fw = int(frame_hw[0]), int(frame_hw[1])
    mh, mw = mask.size
    if (mh, mw) == (fh, fw):
        return mask.labels
    if not resize:
        raise InputError(
            f"mask is {mw}x{mh} but the frames are {fw}x{fh}; use --resize-mask to resize it "
            "(nearest neighbour)",
            mask.path,
        )
    out = resize_labels(mask.labels, (fh, fw))
    lost = sorted(set(mask.object_ids) - {int(i) for i in np.unique(out)})
    if lost:
        raise InputError(f"object(s) {lost} vanish when the mask is resized from {mw}x{mh} to {fw}x{fh}", mask.path)
    return out


def encode_indexed_png(labels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of a mode-P image holding ``labels`` with ``palette`` (DAVIS palette if None)."""
    from PIL import Image

    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("labels must lie in 0..255 for an indexed PNG")
        labels = labels.astype(np.uint8)
    pal = DAVIS_PALETTE if palette is None else np.asarray(palette, np.uint8)
    if pal.shape != (256, 3):
        raise ValueError(f"palette must be (256, 3), got {pal.shape}")
    im = Image.fromarray(np.ascontiguousarray(labels))  # mode L ...
    im.putpalette(pal.tobytes())  # ... becomes mode P
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class MaskWriter:
    """Writes ``<out_dir>/<frame name>.png`` per frame, each file atomically (temp + rename)."""

    def __init__(self, out_dir: str | Path, palette: np.ndarray | None = None, size: tuple[int, int] | None = None) -> None:
        self.out_dir = check_writable_dir(out_dir)
        self.palette = DAVIS_PALETTE if palette is None else np.asarray(palette, np.uint8)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.written = 0

    def write(self, name: str, labels: np.ndarray) -> Path:
        """``labels``: (H, W) original object ids. Returns the file written."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"bad frame name {name!r}")
        if self.size is not None and labels.shape[:2] != self.size:
            raise ValueError(f"mask is {labels.shape[1]}x{labels.shape[0]}, frames are {self.size[1]}x{self.size[0]}")
        path = self.out_dir / f"{name}.png"
        try:
            write_bytes_atomic(path, encode_indexed_png(labels, self.palette))
        except OSError as exc:
            raise OutputError(f"cannot write mask ({exc.strerror})", path) from exc
        self.written += 1
        return path
