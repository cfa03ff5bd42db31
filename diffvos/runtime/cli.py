"""``diffvos track``: a video or frame folder + its first mask -> one mask per frame."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def register(sub: Subcommands) -> None:
    from diffvos.config import add_session_options

    p = sub.add_parser("track", help="track the objects of a first-frame mask through a video")
    p.add_argument("--bundle", required=True, help="bundle directory made by 'diffvos export'")
    p.add_argument("--input", "-i", required=True, help="video file or folder of frames (name order)")
    p.add_argument("--mask", "-m", required=True, help="first frame's mask: palette PNG (one index per object) or 0/255 PNG")
    p.add_argument("--output", "-o", required=True, help="folder for one indexed PNG per frame")
    p.add_argument("--overlay", help="also write an overlay video (e.g. out.mp4)")
    p.add_argument("--resize-mask", action="store_true", help="resize a mask whose size differs from the frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_session_options(p)
    p.set_defaults(func=run_track)


def open_runtime(bundle, args: argparse.Namespace):
    """The runtime of ``bundle`` with the CLI's runtime options; fallback notes go to stderr."""
    from diffvos.config import RuntimeConfig, from_args
    from diffvos.runtime.session import Runtime

    config = from_args(RuntimeConfig, args)
    runtime = Runtime(bundle, backend=config.backend, threads=config.threads,
                      allow_failed_calibration=config.allow_failed_calibration)
    for note in runtime.notes:
        print(note, file=sys.stderr)
    return runtime


def run_track(args: argparse.Namespace) -> int:
    from diffvos.config import session_config_from_args
    from diffvos.runtime.track_video import track_video

    config = session_config_from_args(args)
    summary = track_video(
        open_runtime(args.bundle, args), args.input, args.mask, args.output, overlay=args.overlay, config=config,
        resize_mask=args.resize_mask, progress=not args.no_progress,
    )
    print(summary.line())
    return 0
