"""The one size rule: which input sizes a model takes, and which size a frame is run at.

A graph's height and width must be positive multiples of the model's total stride (ADM, the
VAE factor for Stable Diffusion, MobileNetV2's stride); a frame is resized so its short side is
``short_side`` and each side is floored to a multiple (METHOD.md section 1.1: 854x480 -> 832x480),
unless the bundle has a fixed size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffvos.errors import ExportError, InputError

if TYPE_CHECKING:
    from diffvos.bundle.manifest import Manifest


def check_size(height: int, width: int, multiple: int, model: str, divisor: str = "the total stride") -> None:
    """H and W must be positive multiples of ``multiple``; the error suggests the nearest sizes."""
    bad = [f"{n}={v}" for n, v in (("height", height), ("width", width)) if v <= 0 or v % multiple]
    if bad:
        def near(v: int) -> str:
            lo = max(multiple, v // multiple * multiple)
            return f"{lo} or {lo + multiple}" if lo != v else str(v)

        raise ExportError(
            f"{model} input height and width must be positive multiples of {divisor} {multiple}, got "
            f"{height}x{width} ({', '.join(bad)}; try height {near(height)}, width {near(width)})"
        )


def method_size(frame_hw: tuple[int, int], short_side: int, multiple: int) -> tuple[int, int]:
    """Short side to ``short_side``, each side floored to ``multiple`` (854x480 -> 832x480)."""
    h, w = frame_hw
    scale = short_side / min(h, w)
    th = max(multiple, int(h * scale) // multiple * multiple)
    tw = max(multiple, int(w * scale) // multiple * multiple)
    return th, tw


def input_size(manifest: Manifest, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The graph input size for frames of ``frame_hw``: the bundle's fixed size, or METHOD's rule
    within the dynamic bundle's range."""
    if not manifest.dynamic:
        assert manifest.height is not None and manifest.width is not None
        return manifest.height, manifest.width
    p = manifest.preprocess
    th, tw = method_size(frame_hw, p.short_side, p.multiple)
    if manifest.min_size and manifest.max_size:
        (lh, lw), (uh, uw) = manifest.min_size, manifest.max_size
        if not (lh <= th <= uh and lw <= tw <= uw):
            raise InputError(
                f"frames of {frame_hw[1]}x{frame_hw[0]} map to {tw}x{th}, outside the bundle's dynamic "
                f"range {lw}x{lh} .. {uw}x{uh}; re-export with a wider --min-size/--max-size"
            )
    return th, tw


def grid_size(manifest: Manifest, frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The feature grid (h, w) of frames of ``frame_hw``."""
    h, w = input_size(manifest, frame_hw)
    return h // manifest.stride, w // manifest.stride
