"""A synthetic sample clip with two textured objects, for the offline demo and smoke tests.

No public video can ship with the project (DAVIS is BY-NC), so the demo draws its own:
a textured background and two textured objects that move, scale and cross each other.
Deterministic for a given seed; frames are JPEGs like DAVIS, the first mask a palette PNG.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _texture(rng: np.random.Generator, h: int, w: int, cells: int, colours: np.ndarray) -> np.ndarray:
    """Smooth random colour texture: upsampled random field mapped onto a few colours."""
    field = rng.random((cells, cells * w // h + 1, 3)).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    img = field @ colours.astype(np.float32)
    return np.clip(img, 0, 255)


def make_clip(out_dir: str | Path, frames: int = 40, height: int = 480, width: int = 854, seed: int = 0) -> tuple[Path, Path]:
    """Write ``frames`` JPEGs (00000.jpg ...) and ``00000.png`` (first mask) under ``out_dir``.

    Returns (frame folder, first-mask path).
    """
    from PIL import Image

    from diffvos.io.atomic import write_bytes_atomic

    out = Path(out_dir)
    jpeg_dir, mask_dir = out / "JPEGImages", out / "Annotations"
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bg = _texture(rng, height * 2, width * 2, 12, rng.uniform(0, 160, (3, 3)))
    tex_a = _texture(rng, 200, 200, 6, np.array([[250, 60, 20], [30, 220, 250], [40, 40, 40]]))
    stripes = (np.sin(np.arange(200) / 4.0)[None, :, None] > 0) * np.array([30, 230, 60]) + 20
    tex_b = np.broadcast_to(stripes, (200, 200, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        s = i / max(frames - 1, 1)
        # slow camera pan over the large background
        oy, ox = int(40 * s), int(120 * s)
        img = bg[oy : oy + height, ox : ox + width].copy()
        labels = np.zeros((height, width), np.uint8)
        objects = (
            (1, tex_a, (0.3 + 0.35 * s) * width, (0.45 + 0.1 * np.sin(6 * s)) * height, 0.16 + 0.04 * s, 0.22, True),
            (2, tex_b, (0.75 - 0.3 * s) * width, (0.55 - 0.15 * s) * height, 0.12, 0.12, False),
        )
        for obj_id, tex, cx, cy, rx, ry, ellipse in objects:
            rx_px, ry_px = rx * height, ry * height
            if ellipse:
                inside = ((xx - cx) / rx_px) ** 2 + ((yy - cy) / ry_px) ** 2 <= 1.0
            else:
                inside = (np.abs(xx - cx) <= rx_px) & (np.abs(yy - cy) <= ry_px)
            y0, x0 = int(cy - ry_px), int(cx - rx_px)
            ty = np.clip(((yy - y0) / (2 * ry_px) * 199).astype(int), 0, 199)
            tx = np.clip(((xx - x0) / (2 * rx_px) * 199).astype(int), 0, 199)
            img[inside] = tex[ty[inside], tx[inside]]
            labels[inside] = obj_id
        name = f"{i:05d}"
        ok, jpg = cv2.imencode(".jpg", img.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_bytes_atomic(jpeg_dir / f"{name}.jpg", jpg.tobytes())
        if i == 0:
            import io

            mask = Image.fromarray(labels, mode="P")
            palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
            mask.putpalette(palette)
            buf = io.BytesIO()
            mask.save(buf, format="PNG")
            write_bytes_atomic(mask_dir / f"{name}.png", buf.getvalue())
    return jpeg_dir, mask_dir / "00000.png"


# id, colour BGR, (y0, x0) at frame 0, (dy, dx) per frame, side, first frame visible
SQUARES = (
    (1, (0, 0, 255), (8, 8), (0, 2), 20, 0),
    (2, (255, 200, 0), (36, 70), (0, -2), 20, 0),
)


def moving_squares(n: int = 12, height: int = 64, width: int = 96, objects=SQUARES,
                   background: tuple[int, int, int] = (40, 120, 30)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, truths) in memory: flat coloured squares moving over a flat background, with the
    exact label map of every frame, for samples and tests that compare tracking with the truth."""
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
