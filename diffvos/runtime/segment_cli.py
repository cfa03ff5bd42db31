"""``diffvos segment``: a video with no mask -> temporally stable segment ids per frame."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands
    from diffvos.config import SegmentConfig, SessionConfig
    from diffvos.runtime.session import Runtime


@dataclass
class SegmentSummary:
    frames: int
    segments: int
    seconds: float
    provider: str
    silhouette: dict[int, float] = field(default_factory=dict)  # K -> score, when the rule chose K
    output_dir: str = ""
    overlay: str | None = None

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        chosen = ""
        if self.silhouette:
            chosen = " (silhouette rule: " + ", ".join(f"K={k} {v:.3f}" for k, v in self.silhouette.items()) + ")"
        return (f"segmented {self.frames} frames into {self.segments} segments{chosen} in {self.seconds:.1f} s "
                f"({fps:.2f} frames/s) on {self.provider}; masks in {self.output_dir}"
                + (f"; overlay {self.overlay}" if self.overlay else ""))


def segment_video(runtime: Runtime, input_path: str | Path, output_dir: str | Path, overlay: str | Path | None = None,
                  segment: SegmentConfig | None = None, session: SessionConfig | None = None,
                  progress: bool = True) -> SegmentSummary:
    """Segment every frame of ``input_path``; palette PNGs (ids 1..K) named after the frames."""
    from tqdm import tqdm

    from diffvos.io.frames import open_frames
    from diffvos.io.masks import DAVIS_PALETTE, MaskWriter
    from diffvos.io.overlay import OverlayWriter
    from diffvos.runtime.segment import SegmentSession

    source = open_frames(input_path)
    height, width = source.size
    stream = SegmentSession(runtime, width, height, segment, session)
    writer = MaskWriter(output_dir, DAVIS_PALETTE)
    overlay_writer = OverlayWriter(overlay, source.fps, source.size, palette=DAVIS_PALETTE) if overlay else None
    bar = tqdm(total=len(source), unit="frame", disable=not progress, desc="segmenting")
    frames, t0 = 0, time.perf_counter()
    try:
        for frame in source:
            labels = stream.step(frame.bgr)
            writer.write(frame.name, labels)
            if overlay_writer is not None:
                overlay_writer.write(frame.bgr, labels)
            bar.update(1)
            frames += 1
        if overlay_writer is not None:
            overlay_writer.close()
    except BaseException:
        if overlay_writer is not None:
            overlay_writer.abort()
        raise
    finally:
        bar.close()
        stream.close()
    return SegmentSummary(frames, stream.k, time.perf_counter() - t0, runtime.provider, stream.silhouette,
                          str(output_dir), str(overlay) if overlay else None)


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    from diffvos.config import SegmentConfig, add_options, add_session_options

    add_options(parser.add_argument_group("segmentation"), SegmentConfig)
    add_session_options(parser)


def register(sub: Subcommands) -> None:
    p = sub.add_parser("segment", help="zero-shot video semantic segmentation: segments stable over time, no mask")
    p.add_argument("--bundle", required=True, help="bundle directory made by 'diffvos export' (a feature bundle)")
    p.add_argument("--input", "-i", required=True, help="video file or folder of frames (name order)")
    p.add_argument("--output", "-o", required=True, help="folder for one palette PNG of segment ids per frame")
    p.add_argument("--overlay", help="also write an overlay video (e.g. out.mp4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_segment_options(p)
    p.set_defaults(func=run_segment)


def configs_from_args(args: argparse.Namespace) -> tuple[SegmentConfig, SessionConfig]:
    from diffvos.config import SegmentConfig, from_args, session_config_from_args

    return from_args(SegmentConfig, args), session_config_from_args(args)


def run_segment(args: argparse.Namespace) -> int:
    from diffvos.runtime.cli import open_runtime

    segment, session = configs_from_args(args)
    summary = segment_video(open_runtime(args.bundle, args), args.input, args.output, overlay=args.overlay,
                            segment=segment, session=session, progress=not args.no_progress)
    print(summary.line())
    return 0
