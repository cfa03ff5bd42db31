"""``diffvos track-dataset``: a DAVIS / YouTube-VOS / MOSE root -> one mask folder per video."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def register(sub: Subcommands) -> None:
    from diffvos.config import add_session_options

    p = sub.add_parser("track-dataset", help="track every video of a DAVIS / YouTube-VOS / MOSE root (in process or "
                                             "on Ray), resumable")
    p.add_argument("--bundle", required=True, help="bundle directory made by 'diffvos export'")
    p.add_argument("--input", "-i", required=True, help="dataset root (with JPEGImages/ and Annotations/)")
    p.add_argument("--output", "-o", required=True, help="folder for one mask folder per video")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: a local instance (no ADDRESS) or the cluster at ADDRESS (e.g. 10.0.0.5:6379)")
    p.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per CPU)")
    p.add_argument("--force", action="store_true", help="track every video again, replacing finished ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_session_options(p)
    p.set_defaults(func=run_track_dataset)


def run_track_dataset(args: argparse.Namespace) -> int:
    from diffvos.config import RuntimeConfig, from_args, session_config_from_args
    from diffvos.dataset.run import track_dataset

    runtime = from_args(RuntimeConfig, args)
    summary = track_dataset(args.bundle, args.input, args.output, config=session_config_from_args(args),
                            backend=runtime.backend, threads=runtime.threads, ray_address=args.ray,
                            workers=args.workers, force=args.force, progress=not args.no_progress,
                            allow_failed_calibration=runtime.allow_failed_calibration)
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0
