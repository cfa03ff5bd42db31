"""``diffvos segment``: a video with no mask -> temporally stable segment ids per frame."""

from __future__ import annotations

import argparse
import contextlib
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
                  progress: bool = True, force: bool = False) -> SegmentSummary:
    """Segment every frame of ``input_path``; palette PNGs (ids 1..K) named after the frames.

    The outputs follow the output policy (:mod:`diffvos.io.outputs`, as ``track``): apart from the
    inputs, nothing replaced without ``force`` (then swapped in whole at the end), one writer at a
    time; every frame decodes before the first mask is written."""
    import dataclasses

    from tqdm import tqdm

    from diffvos import __version__
    from diffvos.bundle import MANIFEST_NAME
    from diffvos.io.frames import open_frames
    from diffvos.io.masks import DAVIS_PALETTE, MaskWriter
    from diffvos.io.outputs import (
        OutputLock,
        RunFolder,
        RunRecord,
        check_output_file,
        fingerprint,
    )
    from diffvos.io.overlay import OverlayWriter
    from diffvos.runtime.segment import SegmentSession

    inputs = {"frames": input_path, "bundle": runtime.bundle}
    source = open_frames(input_path)
    if overlay is not None:
        check_output_file(overlay, "--overlay", inputs=inputs, force=force)
    record = RunRecord(command="segment", version=__version__,
                       inputs={"frames": fingerprint(input_path),
                               "bundle": fingerprint(Path(runtime.bundle) / MANIFEST_NAME)},
                       options={"segment": dataclasses.asdict(segment) if segment else None,
                                "session": dataclasses.asdict(session) if session else None})
    with OutputLock(overlay) if overlay is not None else contextlib.nullcontext():
        folder = RunFolder(output_dir, record, inputs=inputs, force=force)  # takes the folder's lock
        try:
            source.scan()  # every frame decodes before any output exists (a damaged one is named)
            height, width = source.size
            stream = SegmentSession(runtime, width, height, segment, session)
        except BaseException:
            folder.release()
            raise
        record.frames_total = len(source)
        bar = tqdm(total=len(source), unit="frame", disable=not progress, desc="segmenting")
        frames, t0 = 0, time.perf_counter()
        with folder:
            writer = MaskWriter(folder.dir, DAVIS_PALETTE)
            overlay_writer = None if overlay is None else \
                OverlayWriter(folder.locate(overlay), source.fps, source.size, palette=DAVIS_PALETTE)
            try:
                for frame in source:
                    labels = stream.step(frame.bgr)
                    writer.write(frame.name, labels)
                    if overlay_writer is not None:
                        overlay_writer.write(frame.bgr, labels)
                    frames += 1
                    folder.progress(frames)
                    bar.update(1)
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
    p.add_argument("--force", action="store_true", help="replace an existing output (whole, at the end)")
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
                            segment=segment, session=session, progress=not args.no_progress, force=args.force)
    print(summary.line())
    return 0
