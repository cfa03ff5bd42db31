"""Scoring unsupervised video segments against ground-truth objects (``diffvos eval --mode segments``).

Per video (every frame, none skipped: no mask was given):

* matching: each ground-truth object (labels 1..max of the annotations, void 255 left out of
  both sides) is matched to one predicted segment by the Hungarian method on the whole video:
  the cost is minus the video IoU of (segment, object), i.e. intersections and unions summed
  over all frames before dividing; one segment per object, one object per segment;
* IoU: per object, the mean over frames of the per-frame J (:func:`~diffvos.evaluation.davis.jaccard`)
  of its matched segment (``j_mean``) and the video IoU of the match (``video_iou``); an object
  left unmatched (more objects than segments) scores 0;
* temporal flip rate: the fraction of pixels whose segment id differs between consecutive
  frames, averaged over the frame pairs (``flip``); ``flip_static`` counts only the pixels
  whose ground-truth label is the same in both frames (where a change is an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffvos.errors import InputError
from diffvos.evaluation.davis import (
    VOID_LABEL,
    annotations_dir,
    jaccard,
    prediction_sequences,
    read_mask,
)
from diffvos.io.frames import natural_key


@dataclass
class SegmentScore:
    sequence: str
    segments: int  # distinct predicted ids in the video
    objects: list[int]
    matches: dict[int, int | None]  # object -> segment
    video_iou: dict[int, float]
    j_mean: dict[int, float]
    flip: float
    flip_static: float
    frames: int

    @property
    def mean_j(self) -> float:
        return float(np.mean(list(self.j_mean.values()))) if self.j_mean else 0.0


@dataclass
class SegmentReport:
    sequences: list[SegmentScore] = field(default_factory=list)

    def global_row(self) -> dict[str, float]:
        objs = [j for s in self.sequences for j in s.j_mean.values()]
        vids = [v for s in self.sequences for v in s.video_iou.values()]
        return {"J-Mean": float(np.mean(objs)) if objs else 0.0, "Video-IoU": float(np.mean(vids)) if vids else 0.0,
                "Flip": float(np.mean([s.flip for s in self.sequences])),
                "Flip-Static": float(np.mean([s.flip_static for s in self.sequences]))}


def hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one assignment (rows, cols); scipy's implementation."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("segment evaluation needs scipy (pip install 'diffvos[eval]')") from exc
    rows, cols = linear_sum_assignment(cost)
    return list(zip(rows.tolist(), cols.tolist()))


def score_segments(sequence: str, gt_frames: Sequence[np.ndarray], pred_frames: Sequence[np.ndarray]) -> SegmentScore:
    """Score one video's predicted segment maps against its ground-truth label maps."""
    if len(gt_frames) != len(pred_frames) or not gt_frames:
        raise InputError(f"{len(pred_frames)} predicted frames for {len(gt_frames)} ground-truth frames", sequence)
    for i, (g, p) in enumerate(zip(gt_frames, pred_frames)):
        if g.shape != p.shape:
            raise InputError(f"frame {i}: prediction is {p.shape[1]}x{p.shape[0]}, ground truth {g.shape[1]}x{g.shape[0]}",
                             sequence)
    objects = sorted({int(v) for g in gt_frames for v in np.unique(g) if 0 < v != VOID_LABEL})
    segments = sorted({int(v) for p in pred_frames for v in np.unique(p)})
    inter = np.zeros((len(objects), len(segments)))
    obj_area = np.zeros(len(objects))
    seg_area = np.zeros(len(segments))
    seg_index = np.zeros(256, np.intp)
    seg_index[segments] = np.arange(len(segments))
    for g, p in zip(gt_frames, pred_frames):
        keep = g != VOID_LABEL
        pk, gk = seg_index[p[keep]], g[keep]
        seg_area += np.bincount(pk, minlength=len(segments))
        for i, o in enumerate(objects):
            on = gk == o
            obj_area[i] += np.count_nonzero(on)
            inter[i] += np.bincount(pk[on], minlength=len(segments))
    union = obj_area[:, None] + seg_area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    matches: dict[int, int | None] = {o: None for o in objects}
    video_iou = {o: 0.0 for o in objects}
    if objects and segments:
        for i, s in hungarian(-iou):
            matches[objects[i]] = segments[s]
            video_iou[objects[i]] = float(iou[i, s])
    j_mean = {}
    for o in objects:
        seg = matches[o]
        js = [jaccard(g == o, p == seg if seg is not None else np.zeros_like(p, bool), g == VOID_LABEL)
              for g, p in zip(gt_frames, pred_frames)]
        j_mean[o] = float(np.mean(js))
    flips, static = [], []
    for (g0, p0), (g1, p1) in zip(zip(gt_frames, pred_frames), zip(gt_frames[1:], pred_frames[1:])):
        changed = p0 != p1
        flips.append(float(changed.mean()))
        same = (g0 == g1) & (g0 != VOID_LABEL)
        static.append(float(changed[same].mean()) if same.any() else 0.0)
    return SegmentScore(sequence, len(segments), objects, matches, video_iou, j_mean,
                        float(np.mean(flips)) if flips else 0.0, float(np.mean(static)) if static else 0.0,
                        len(gt_frames))


def evaluate_segments(predictions: str | Path, annotations: str | Path, sequences: Sequence[str] | None = None,
                      resolution: str = "480p") -> SegmentReport:
    """Score ``predictions/<seq>/<frame>.png`` (segment ids) against a DAVIS root, every frame."""
    pred_root, sequences = prediction_sequences(predictions, sequences)
    gt_root = annotations_dir(annotations, resolution)
    report = SegmentReport()
    for seq in sequences:
        gt_files = sorted((gt_root / seq).glob("*.png"), key=lambda p: natural_key(p.name))
        if not gt_files:
            raise InputError(f"no ground truth for sequence {seq!r}", gt_root / seq)
        preds = []
        for g in gt_files:
            p = pred_root / seq / g.name
            if not p.is_file():
                raise InputError(f"missing prediction for frame {g.name}", p)
            preds.append(read_mask(p))
        report.sequences.append(score_segments(seq, [read_mask(g) for g in gt_files], preds))
    return report


def format_segments(report: SegmentReport, runs: Any = None) -> str:
    fps = {r.sequence: r.frames / r.seconds for r in runs or []}
    lines = [f"{'sequence':<20} {'K':>3} {'J':>6} {'vIoU':>6} {'flip':>7} {'flip-st':>7}" + (" frames/s" if fps else "")]
    for s in report.sequences:
        vi = np.mean(list(s.video_iou.values())) if s.video_iou else 0.0
        lines.append(f"{s.sequence:<20} {s.segments:>3} {s.mean_j:6.3f} {vi:6.3f} {s.flip:7.4f} {s.flip_static:7.4f}"
                     + (f" {fps[s.sequence]:8.2f}" if s.sequence in fps else ""))
    g = report.global_row()
    lines.append(f"{'global':<20} {'':>3} {g['J-Mean']:6.3f} {g['Video-IoU']:6.3f} {g['Flip']:7.4f} {g['Flip-Static']:7.4f}")
    return "\n".join(lines)


def segments_csv(report: SegmentReport) -> str:
    rows = ["Sequence,Object,Segment,J-Mean,Video-IoU,Flip,Flip-Static"]
    for s in report.sequences:
        for o in s.objects:
            seg = s.matches[o]
            rows.append(f"{s.sequence},{o},{'' if seg is None else seg},{s.j_mean[o]:.6f},{s.video_iou[o]:.6f},"
                        f"{s.flip:.6f},{s.flip_static:.6f}")
    return "\n".join(rows) + "\n"


def segment_davis(runtime: Any, root: str | Path, out_dir: str | Path, sequences: Sequence[str] | None = None,
                  segment: Any = None, session: Any = None, resolution: str = "480p",
                  progress: bool = True, force: bool = False) -> tuple[SegmentReport, list]:
    """Segment every sequence of a DAVIS root (no mask used) and score the segments."""
    import time

    from diffvos.evaluation.quality import SequenceRun, davis_sequences
    from diffvos.runtime.segment_cli import segment_video

    root, out_dir = Path(root), Path(out_dir)
    sequences = list(sequences or davis_sequences(root, resolution))
    runs = []
    for seq in sequences:
        t0 = time.perf_counter()
        summary = segment_video(runtime, root / "JPEGImages" / resolution / seq, out_dir / seq, segment=segment,
                                session=session, progress=progress, force=force)
        runs.append(SequenceRun(seq, summary.frames, time.perf_counter() - t0))
    return evaluate_segments(out_dir, root, sequences, resolution), runs
