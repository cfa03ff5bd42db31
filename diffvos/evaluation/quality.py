"""Tracking quality on real video: track every sequence of a DAVIS root with a bundle, then
score it with the DAVIS measures. Used by ``diffvos bench quality`` and the quality tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from diffvos.config import SessionConfig
from diffvos.errors import InputError
from diffvos.evaluation.davis import Report, annotations_dir, evaluate_davis
from diffvos.runtime.session import Runtime


@dataclass
class SequenceRun:
    sequence: str
    frames: int
    seconds: float


def davis_sequences(root: str | Path, resolution: str = "480p") -> list[str]:
    images = Path(root) / "JPEGImages" / resolution
    if not images.is_dir():
        raise InputError(f"no JPEGImages/{resolution} folder", root)
    return sorted(p.name for p in images.iterdir() if p.is_dir())


def track_davis(
    runtime: Runtime,
    root: str | Path,
    out_dir: str | Path,
    sequences: list[str] | None = None,
    config: SessionConfig | None = None,
    resolution: str = "480p",
    progress: bool = True,
    force: bool = False,
) -> tuple[Report, list[SequenceRun]]:
    """Track each sequence from its first ground-truth mask with one session of ``runtime`` per
    sequence (``config`` for all of them); return the DAVIS report and timings."""
    from diffvos.runtime.track_video import track_video

    root, out_dir = Path(root), Path(out_dir)
    sequences = sequences or davis_sequences(root, resolution)
    gt = annotations_dir(root, resolution)
    runs = []
    for seq in sequences:
        t0 = time.perf_counter()
        summary = track_video(runtime, root / "JPEGImages" / resolution / seq, gt / seq / "00000.png", out_dir / seq,
                              config=config, progress=progress, force=force)
        runs.append(SequenceRun(seq, summary.frames, time.perf_counter() - t0))
    return evaluate_davis(out_dir, root, sequences, resolution=resolution), runs


def format_quality(report: Report, runs: list[SequenceRun], label: str = "") -> str:
    """One table: per sequence J, F, J&F and frames/s, then the global row."""
    rows = {name: (j, f) for name, j, f in report.sequence_rows()}
    lines = [f"{label}" if label else "", f"{'sequence':<20} {'J':>6} {'F':>6} {'J&F':>6} {'frames/s':>9}"]
    for run in runs:
        j, f = rows[run.sequence]
        lines.append(f"{run.sequence:<20} {j:6.3f} {f:6.3f} {(j + f) / 2:6.3f} {run.frames / run.seconds:9.2f}")
    g = report.global_row()
    frames = sum(r.frames for r in runs)
    secs = sum(r.seconds for r in runs)
    lines.append(f"{'global':<20} {g['J-Mean']:6.3f} {g['F-Mean']:6.3f} {g['J&F-Mean']:6.3f} {frames / secs:9.2f}")
    return "\n".join(line for line in lines if line is not None)
