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


HW = tuple[int, int]


def profile_sizes(manifest: Manifest, opt_hw: HW | None = None, max_hw: HW | None = None) -> tuple[HW, HW, HW]:
    """(min, opt, max) frame input sizes (pixels) a TensorRT optimisation profile covers.

    A static bundle: its size three times. A dynamic bundle: from its ``min_size``, optimised for
    ``opt_hw`` (default: a 854x480 frame by METHOD's rule), up to ``max_hw``. The default maximum
    is a square of the optimum's long side, which takes 16:9 frames in either orientation at the
    bundle's short side (480x832 and 832x480), not the bundle's own maximum (1088x1920 by
    default): TensorRT sizes an execution context's activations for the profile's maximum, more
    than an 8 GB Jetson has for the diffusion U-Net. Give ``max_hw`` for larger frames."""
    if not manifest.dynamic:
        assert manifest.height is not None and manifest.width is not None
        fixed = (int(manifest.height), int(manifest.width))
        return fixed, fixed, fixed
    if not (manifest.min_size and manifest.max_size):
        raise InputError("dynamic bundle without min_size/max_size: re-export it with --min-size/--max-size")
    lo = (int(manifest.min_size[0]), int(manifest.min_size[1]))
    top = (int(manifest.max_size[0]), int(manifest.max_size[1]))
    p = manifest.preprocess

    def clamp(hw: HW) -> HW:
        return min(max(hw[0], lo[0]), top[0]), min(max(hw[1], lo[1]), top[1])

    if max_hw is not None and not (lo[0] <= max_hw[0] <= top[0] and lo[1] <= max_hw[1] <= top[1]):
        raise InputError(f"--max-size {max_hw[0]}x{max_hw[1]} is outside the bundle's range "
                         f"{lo[0]}x{lo[1]} .. {top[0]}x{top[1]} (HxW)")
    opt = clamp(opt_hw or method_size((480, 854), p.short_side, p.multiple))
    if max_hw is None:
        side = max(opt)
        hi = clamp((side, side))
    else:
        hi = max_hw
        if opt_hw is None:  # the default optimum never exceeds a maximum the user chose
            opt = (min(opt[0], hi[0]), min(opt[1], hi[1]))
    if not (opt[0] <= hi[0] and opt[1] <= hi[1]):
        raise InputError(f"--opt-size {opt[0]}x{opt[1]} is larger than --max-size {hi[0]}x{hi[1]}")
    return lo, opt, hi


def graph_input_shape(manifest: Manifest, graph: str, hw: HW, streams: int = 1) -> tuple[int, ...]:
    """The input shape of bundle graph ``graph`` for frames run at ``hw`` pixels: the graph's own
    fixed dimensions, its dynamic height/width from ``hw`` (divided by the VAE factor for the
    feature graph of a latent model), and for a feature graph with a stream axis ``streams`` x E
    draws on axis 0."""
    from diffvos.bundle.manifest import FEATURES_GRAPH

    entry = manifest.graphs[graph]
    dims = list(entry.inputs[entry.input_name])
    scale = manifest.latent.downsample if manifest.latent is not None and graph == FEATURES_GRAPH else 1
    shape = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif axis in (len(dims) - 2, len(dims) - 1):
            shape.append(hw[axis - len(dims) + 2] // scale)
        elif axis == 0 and graph == FEATURES_GRAPH and manifest.streams.max_streams > 1:
            shape.append(streams * manifest.ensemble)
        else:
            raise InputError(f"graph '{graph}' has a dynamic dimension {dim!r} at axis {axis}; only height and "
                             "width may be dynamic")
    return tuple(shape)


def graph_profile(manifest: Manifest, graph: str, opt_hw: HW | None = None, max_hw: HW | None = None,
                  opt_streams: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of ``graph`` for the sizes of :func:`profile_sizes`; a stream
    axis spans 1 .. ``streams.max_streams``, optimised for ``opt_streams`` (default the manifest's)."""
    lo, opt, hi = profile_sizes(manifest, opt_hw, max_hw)
    s = manifest.streams
    best = min(max(opt_streams or s.opt_streams, 1), s.max_streams)
    return (graph_input_shape(manifest, graph, lo, 1), graph_input_shape(manifest, graph, opt, best),
            graph_input_shape(manifest, graph, hi, s.max_streams))
