"""``diffvos track``: a video or frame folder + its first mask -> one mask per frame."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def add_output_options(p: argparse.ArgumentParser, resume: bool = False) -> None:
    """``--force`` (and ``--resume``) of a command under the output policy (diffvos.io.outputs)."""
    group = p.add_mutually_exclusive_group() if resume else p
    group.add_argument("--force", action="store_true",
                       help="replace an existing output whole (written beside it and swapped in at the end)")
    if resume:
        group.add_argument("--resume", action="store_true",
                           help="continue the interrupted run recorded in the output folder (same inputs and options)")


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
    add_output_options(p, resume=True)
    p.add_argument("--skip-bad-frames", action="store_true",
                   help="track past frames that do not decode or decode damaged (listed in the summary, no mask "
                   "written) instead of failing")
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
    from diffvos.runtime.track_video import TrackJob

    config = session_config_from_args(args)
    job = TrackJob.prepare(args.input, args.mask, args.output, bundle=args.bundle, overlay=args.overlay, config=config,
                           resize_mask=args.resize_mask, force=args.force, resume=args.resume,
                           skip_bad_frames=args.skip_bad_frames)  # every check before the bundle loads
    try:
        runtime = open_runtime(args.bundle, args)
    except BaseException:
        job.cancel()
        raise
    summary = job.run(runtime, progress=not args.no_progress, log=lambda line: print(line, file=sys.stderr))
    print(summary.line())
    return 0
