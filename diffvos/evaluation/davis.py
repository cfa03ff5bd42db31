"""DAVIS semi-supervised scoring: region similarity J and boundary accuracy F.

The definitions follow the DAVIS benchmark (Perazzi et al. 2016, Pont-Tuset et al. 2017) and the
behaviour of its reference evaluation code in the cases the papers leave open, so that scores agree
with it to the printed precision:

* objects are the labels 1..max of the first ground-truth frame; the first and last frames of a
  sequence are not scored, and only those scored frames need a prediction;
* J is the IoU of the binary masks; an empty union counts as 1;
* F matches the one-pixel boundary maps of both masks within ``ceil(0.008 * image diagonal)``
  pixels (disk dilation); no boundary on either side gives F = 1, on one side only F = 0;
* per object: mean, recall (fraction of frames > 0.5) and decay (first quarter minus last quarter,
  with the reference's overlapping bins);
* ground-truth void pixels (label 255) count as background, as the reference does in the
  semi-supervised task; ``exclude_void=True`` removes them from both masks instead (the published
  definition).

Torch-free: numpy, OpenCV and Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from diffvos.errors import InputError
from diffvos.io.frames import natural_key
from diffvos.io.masks import read_label_map

VOID_LABEL = 255
BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


# ----------------------------------------------------------------------------- per-frame metrics


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """IoU of two binary masks, void pixels left out; 1.0 when the union is empty."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    union = np.count_nonzero((gt | pred) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred & keep) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask, offset half a pixel towards the origin.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour
    (outside the image counts as background). On the last row only the east neighbour counts,
    on the last column only the south one, and the bottom-right pixel never is a boundary, so
    the image border itself is not a boundary.
    """
    m = mask.astype(bool)
    h, w = m.shape
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    south_east = np.zeros_like(m)
    east[:, : w - 1] = m[:, 1:]
    south[: h - 1, :] = m[1:, :]
    south_east[: h - 1, : w - 1] = m[1:, 1:]
    b = (m != east) | (m != south) | (m != south_east)
    b[h - 1, :] = m[h - 1, :] != east[h - 1, :]
    b[:, w - 1] = m[:, w - 1] != south[:, w - 1]
    b[h - 1, w - 1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """Structuring element: the pixels (x, y) with x^2 + y^2 <= radius^2, as uint8."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def boundary_tolerance(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """Match radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_precision_recall(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> tuple[float, float]:
    """Boundary precision and recall with the benchmark's conventions for empty boundaries."""
    if void is not None:
        keep = ~void.astype(bool)
        gt, pred = gt.astype(bool) & keep, pred.astype(bool) & keep
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = int(np.count_nonzero(gt_b)), int(np.count_nonzero(pred_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_pred == 0:
        return 1.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0
    se = disk(boundary_tolerance(gt.shape, bound_th))
    gt_near = cv2.dilate(gt_b.astype(np.uint8), se).astype(bool)
    pred_near = cv2.dilate(pred_b.astype(np.uint8), se).astype(bool)
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    return float(precision), float(recall)


def f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """Boundary F-measure 2PR/(P+R); 0 when P + R = 0."""
    p, r = boundary_precision_recall(gt, pred, void, bound_th)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


# ----------------------------------------------------------------------------- per-object statistics


@dataclass(frozen=True)
class Stats:
    mean: float
    recall: float
    decay: float


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The four [start, stop) frame ranges of the decay statistic over ``n`` frames.

    As in the benchmark: the edges are round(linspace(1, n, 5)) - 1 (ties rounded up), and each bin
    runs from its edge to the next edge *inclusive*, so neighbouring bins share a frame.
    """
    edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(int)
    return [(int(edges[i]), int(edges[i + 1]) + 1) for i in range(4)]


def statistics(values: Sequence[float]) -> Stats:
    """Mean, recall (fraction > 0.5) and decay (first-bin mean minus last-bin mean)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no scored frames")
    bins = decay_bins(v.size)
    first, last = v[slice(*bins[0])], v[slice(*bins[3])]
    return Stats(float(v.mean()), float(np.mean(v > 0.5)), float(first.mean() - last.mean()))


# ----------------------------------------------------------------------------- reading masks


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG as a uint8 label map (0 background, k object k, 255 void), decoded by the I/O
    layer's rules (:func:`diffvos.io.masks.read_label_map`)."""
    return read_label_map(path)[0]


def mean_object_iou(reference: np.ndarray, candidate: np.ndarray, object_ids: Sequence[int]) -> float:
    """Mean J (IoU) over ``object_ids`` of two label maps; an object absent from both counts as 1."""
    if not len(object_ids):
        return 1.0
    return float(np.mean([jaccard(reference == k, candidate == k) for k in object_ids]))


# ----------------------------------------------------------------------------- evaluation


@dataclass
class ObjectScore:
    """Per-frame J and F of one object over the scored frames of its sequence."""

    sequence: str
    object_id: int
    j: np.ndarray
    f: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    @property
    def j_stats(self) -> Stats:
        return statistics(self.j)

    @property
    def f_stats(self) -> Stats:
        return statistics(self.f)


@dataclass
class Report:
    """All objects' scores, in sequence order, with the benchmark's aggregate figures."""

    objects: list[ObjectScore] = field(default_factory=list)

    def sequences(self) -> list[str]:
        return list(dict.fromkeys(o.sequence for o in self.objects))

    def global_row(self) -> dict[str, float]:
        """Means over objects (every object of every sequence weighs the same)."""
        if not self.objects:
            raise ValueError("nothing was scored")
        js = [o.j_stats for o in self.objects]
        fs = [o.f_stats for o in self.objects]
        jm, fm = np.mean([s.mean for s in js]), np.mean([s.mean for s in fs])
        values = (
            (jm + fm) / 2, jm, np.mean([s.recall for s in js]), np.mean([s.decay for s in js]),
            fm, np.mean([s.recall for s in fs]), np.mean([s.decay for s in fs]),
        )
        return {k: float(v) for k, v in zip(GLOBAL_COLUMNS, values)}

    def object_rows(self) -> list[tuple[str, float, float]]:
        """(``<seq>_<obj>``, J-Mean, F-Mean) per object, as in the per-sequence CSV."""
        return [(o.name, o.j_stats.mean, o.f_stats.mean) for o in self.objects]

    def sequence_rows(self) -> list[tuple[str, float, float]]:
        """(sequence, J-Mean, F-Mean): each the mean over the sequence's objects."""
        rows = []
        for seq in self.sequences():
            objs = [o for o in self.objects if o.sequence == seq]
            rows.append((seq, float(np.mean([o.j_stats.mean for o in objs])),
                         float(np.mean([o.f_stats.mean for o in objs]))))
        return rows


def mask_files(folder: Path) -> list[Path]:
    """The PNG masks of a folder (any case of ``.png``; none when it does not exist), in natural
    order: one per frame."""
    return sorted((p for p in folder.glob("*") if p.suffix.lower() == ".png" and p.is_file()),
                  key=lambda p: natural_key(p.name))


def evaluate_masks(
    sequence: str,
    gt_frames: Sequence[np.ndarray],
    pred_frames: Sequence[np.ndarray],
    exclude_void: bool = False,
    names: Sequence[str] | None = None,
) -> list[ObjectScore]:
    """Score one sequence given all its ground-truth label maps and the predictions of frames
    1..n-2 (``pred_frames`` may hold all n frames; the first and last are then ignored)."""
    n = len(gt_frames)
    if len(pred_frames) == n:
        pred_frames = pred_frames[1 : n - 1]
    return _score(sequence, gt_frames[0], list(zip(gt_frames[1 : n - 1], pred_frames)), exclude_void, names)


def _score(sequence, first_gt, pairs: Iterable, exclude_void: bool, names=None) -> list[ObjectScore]:
    first = np.where(first_gt == VOID_LABEL, 0, first_gt)
    n_obj = int(first.max())
    js, fs = [], []
    for idx, (gt, pred) in enumerate(pairs):
        name = names[idx] if names is not None else f"{sequence} frame {idx + 1}"
        if gt.shape != first_gt.shape:
            raise InputError(f"ground truth is {gt.shape[1]}x{gt.shape[0]}, the first frame "
                             f"{first_gt.shape[1]}x{first_gt.shape[0]}", name)
        if pred.shape != gt.shape:
            raise InputError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                             f"is {gt.shape[1]}x{gt.shape[0]}", name)
        top = int(pred.max())
        if top > n_obj:
            raise InputError(f"prediction has label {top} but the sequence has {n_obj} object(s) "
                             "in its first ground-truth frame", name)
        void = gt == VOID_LABEL
        gt_labels = np.where(void, 0, gt)
        v = void if exclude_void else None
        js.append([jaccard(gt_labels == k, pred == k, v) for k in range(1, n_obj + 1)])
        fs.append([f_measure(gt_labels == k, pred == k, v) for k in range(1, n_obj + 1)])
    if not js:
        raise InputError("a sequence needs at least 3 frames (the first and last are not scored)",
                         sequence)
    j, f = np.asarray(js, dtype=np.float64), np.asarray(fs, dtype=np.float64)
    return [ObjectScore(sequence, k + 1, j[:, k], f[:, k]) for k in range(n_obj)]


def evaluate_sequence(
    pred_dir: str | Path, gt_dir: str | Path, exclude_void: bool = False
) -> list[ObjectScore]:
    """Score one sequence folder of predictions against its ground-truth folder, frame by frame."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files = mask_files(gt_dir)
    if len(gt_files) < 3:
        raise InputError(f"needs at least 3 ground-truth frames, found {len(gt_files)}", gt_dir)
    if not pred_dir.is_dir():
        raise InputError("no prediction folder for this sequence", pred_dir)
    check_run_complete(pred_dir)
    first_gt = read_mask(gt_files[0])
    scored = gt_files[1:-1]
    pred_files = [pred_dir / p.name for p in scored]

    def pairs():
        for g, p in zip(scored, pred_files):
            if not p.is_file():
                raise InputError(f"missing prediction for frame {g.name}", p)
            yield read_mask(g), read_mask(p)

    return _score(gt_dir.name, first_gt, pairs(), exclude_void, [str(p) for p in pred_files])


def check_run_complete(pred_dir: Path) -> None:
    """Predictions written by ``diffvos track`` carry a run manifest: refuse an unfinished run."""
    from diffvos.io.outputs import read_run_record

    record = read_run_record(pred_dir)
    if record is not None and not record.complete:
        raise InputError(f"these predictions come from an unfinished run ({record.frames_done} of "
                         f"{record.frames_total} frames); finish it with 'diffvos track --resume'", pred_dir)


def annotations_dir(root: str | Path, resolution: str = "480p") -> Path:
    """ROOT/Annotations/<resolution>, or an InputError saying what is missing."""
    path = Path(root) / "Annotations" / resolution
    if not path.is_dir():
        raise InputError(f"no Annotations/{resolution} folder (expected the DAVIS layout "
                         f"ROOT/Annotations/{resolution}/<sequence>/00000.png)", root)
    return path


def prediction_sequences(predictions: str | Path, sequences: Sequence[str] | None) -> tuple[Path, list[str]]:
    """The predictions folder and the sequences to score: ``sequences``, or every sequence folder
    in it (sorted by name); an InputError when the folder or its sequences are missing."""
    pred_root = Path(predictions)
    if not pred_root.is_dir():
        raise InputError("predictions folder not found", pred_root)
    if sequences is None:
        sequences = sorted(p.name for p in pred_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not sequences:
            flat = " (it holds PNG masks directly: put each sequence's masks in ROOT/<sequence>/ and give ROOT)" \
                if any(pred_root.glob("*.png")) else ""
            raise InputError(f"no sequence folders in the predictions folder{flat}; expected "
                             "ROOT/<sequence>/00000.png ...", pred_root)
    return pred_root, list(sequences)


def evaluate_davis(
    predictions: str | Path,
    annotations: str | Path,
    sequences: Sequence[str] | None = None,
    exclude_void: bool = False,
    resolution: str = "480p",
) -> Report:
    """Score a predictions folder (``<seq>/<frame>.png``) against a DAVIS root.

    ``sequences`` defaults to every sequence folder in ``predictions`` (sorted by name); each must
    exist in the annotations.
    """
    pred_root, sequences = prediction_sequences(predictions, sequences)
    gt_root = annotations_dir(annotations, resolution)
    report = Report()
    for seq in sequences:
        gt_dir = gt_root / seq
        if not gt_dir.is_dir():
            raise InputError(f"no ground truth for sequence {seq!r}", gt_dir)
        report.objects.extend(evaluate_sequence(pred_root / seq, gt_dir, exclude_void))
    return report


# ----------------------------------------------------------------------------- output


def global_csv(report: Report) -> str:
    """The benchmark's global CSV: one header line and one row, 3 decimals."""
    row = report.global_row()
    return ",".join(GLOBAL_COLUMNS) + "\n" + ",".join(f"{row[c]:.3f}" for c in GLOBAL_COLUMNS) + "\n"


def per_sequence_csv(report: Report) -> str:
    """The benchmark's per-sequence CSV: Sequence,J-Mean,F-Mean with one ``<seq>_<obj>`` row per object."""
    lines = [",".join(SEQUENCE_COLUMNS)]
    lines += [f"{name},{j:.3f},{f:.3f}" for name, j, f in report.object_rows()]
    return "\n".join(lines) + "\n"


def format_report(report: Report) -> str:
    """Human-readable tables: per sequence (objects indented beneath multi-object ones), then global."""
    width = max([len("Sequence")] + [len(o.name) + 2 for o in report.objects])
    head = f"{'Sequence':<{width}}  {'J&F':>6}  {'J-Mean':>6}  {'F-Mean':>6}"
    lines = [head, "-" * len(head)]
    seq_rows = {s: (j, f) for s, j, f in report.sequence_rows()}
    for seq in report.sequences():
        j, f = seq_rows[seq]
        lines.append(f"{seq:<{width}}  {(j + f) / 2:6.3f}  {j:6.3f}  {f:6.3f}")
        objs = [o for o in report.objects if o.sequence == seq]
        if len(objs) > 1:
            for o in objs:
                oj, of = o.j_stats.mean, o.f_stats.mean
                lines.append(f"{'  ' + o.name:<{width}}  {(oj + of) / 2:6.3f}  {oj:6.3f}  {of:6.3f}")
    g = report.global_row()
    lines += ["", f"Global ({len(report.objects)} objects in {len(report.sequences())} sequences)"]
    lines.append("  ".join(f"{c:>8}" for c in GLOBAL_COLUMNS))
    lines.append("  ".join(f"{g[c]:8.3f}" for c in GLOBAL_COLUMNS))
    return "\n".join(lines)
