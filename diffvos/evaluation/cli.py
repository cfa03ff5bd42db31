"""``diffvos eval``: DAVIS semi-supervised J&F of a folder of predicted masks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def per_sequence_path(global_csv: str | Path) -> Path:
    """Where the per-sequence CSV goes beside the global one: ``<stem>.per-sequence.csv``."""
    p = Path(global_csv)
    return p.with_name(f"{p.stem}.per-sequence{p.suffix or '.csv'}")


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "eval",
        help="score predicted masks against DAVIS ground truth (J&F, semi-supervised)",
        description="Score predicted masks with the DAVIS semi-supervised measures (J: IoU, F: boundary "
        "F-measure; mean, recall, decay). The first and last frame of each sequence are not scored.",
    )
    p.add_argument("--predictions", "-p", required=True,
                   help="folder with one subfolder of PNG masks per sequence (<seq>/00001.png ...)")
    p.add_argument("--annotations", "-a", required=True,
                   help="DAVIS root holding Annotations/480p/<seq>/00000.png ...")
    p.add_argument("--sequences", nargs="+", metavar="SEQ",
                   help="sequences to score (default: every sequence folder in --predictions)")
    p.add_argument("--csv", metavar="OUT",
                   help="write the global results to OUT and the per-object results to "
                   "<OUT stem>.per-sequence.csv beside it")
    p.add_argument("--force", action="store_true", help="replace existing CSV files")
    p.add_argument("--resolution", default="480p", help="annotation resolution folder (default 480p)")
    p.add_argument("--mode", choices=("vos", "segments"), default="vos",
                   help="vos: semi-supervised J&F of tracked objects (default); segments: unsupervised segments "
                   "from 'diffvos segment', Hungarian-matched to the objects per video, every frame scored "
                   "(J of the matched segment, video IoU, temporal flip rate)")
    p.add_argument("--exclude-void", action="store_true",
                   help="leave ground-truth void pixels (255) out of both masks; the benchmark's code "
                   "counts them as background, which is the default")
    p.set_defaults(func=run)

    b = sub.add_parser("bench", help="benchmarks that print figures (quality on real video, ...)")
    kinds = b.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    q = kinds.add_parser("quality", help="track every sequence of a DAVIS root with a bundle; print J&F and frames/s")
    _davis_run_options(q, "diffvos-quality", "where the predicted masks go")
    from diffvos.config import add_session_options

    add_session_options(q)
    q.set_defaults(func=run_quality)
    g = kinds.add_parser("segments", help="segment every sequence of a DAVIS root with no mask (diffvos segment); "
                         "print matched J, video IoU, flip rate and frames/s")
    _davis_run_options(g, "diffvos-segments", "where the predicted segments go")
    from diffvos.runtime.segment_cli import add_segment_options

    add_segment_options(g)
    g.set_defaults(func=run_segments_bench)
    from diffvos.evaluation.benchmarks import register as register_benchmarks

    register_benchmarks(kinds)


def _davis_run_options(p: argparse.ArgumentParser, output: str, what: str) -> None:
    """The options of a benchmark that runs a bundle over every sequence of a DAVIS root."""
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--davis", required=True, help="DAVIS root (JPEGImages/480p, Annotations/480p)")
    p.add_argument("--sequences", nargs="+", metavar="SEQ", help="default: every sequence")
    p.add_argument("--output", default=output, help=what)
    p.add_argument("--force", action="store_true", help="replace results already in --output")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from diffvos.evaluation.davis import (
        evaluate_davis,
        format_report,
        global_csv,
        per_sequence_csv,
    )
    from diffvos.io.atomic import write_text_atomic
    from diffvos.io.outputs import guard_outputs

    segments = args.mode == "segments"
    csvs = {"--csv": args.csv} if args.csv else {}
    if args.csv and not segments:
        csvs["per-sequence CSV"] = per_sequence_path(args.csv)
    inputs = {"predictions": args.predictions, "annotations": args.annotations}
    with guard_outputs(csvs, inputs, force=args.force):  # checked before a long evaluation, not after it
        if segments:
            from diffvos.evaluation.segments import (
                evaluate_segments,
                format_segments,
                segments_csv,
            )

            seg_report = evaluate_segments(args.predictions, args.annotations, args.sequences, args.resolution)
            print(format_segments(seg_report))
            if args.csv:
                write_text_atomic(Path(args.csv), segments_csv(seg_report))
                print(f"\nwrote {args.csv}")
            return 0
        report = evaluate_davis(args.predictions, args.annotations, args.sequences,
                                exclude_void=args.exclude_void, resolution=args.resolution)
        print(format_report(report))
        if args.csv:
            out, seq_out = Path(args.csv), per_sequence_path(args.csv)
            write_text_atomic(out, global_csv(report))
            write_text_atomic(seq_out, per_sequence_csv(report))
            print(f"\nwrote {out} and {seq_out}")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from diffvos.config import session_config_from_args
    from diffvos.evaluation.quality import format_quality, track_davis
    from diffvos.runtime.cli import open_runtime

    config = session_config_from_args(args)
    report, runs = track_davis(open_runtime(args.bundle, args), args.davis, args.output, args.sequences, config=config,
                               progress=not args.no_progress, force=args.force)
    print(format_quality(report, runs, f"bundle {args.bundle}, mag-filter {args.mag_filter}"))
    return 0


def run_segments_bench(args: argparse.Namespace) -> int:
    from diffvos.evaluation.segments import format_segments, segment_davis
    from diffvos.runtime.cli import open_runtime
    from diffvos.runtime.segment_cli import configs_from_args

    segment, session = configs_from_args(args)
    report, runs = segment_davis(open_runtime(args.bundle, args), args.davis, args.output, args.sequences,
                                 segment=segment, session=session, progress=not args.no_progress, force=args.force)
    print(format_segments(report, runs))
    return 0
