"""DAVIS J&F scoring (diffvos.evaluation): every definition on hand-made masks whose answers were
worked out by hand, a brute-force cross-check of the boundary measure, figures produced by the
benchmark's own reference code (davis2017-evaluation) on a synthetic set, and DAVIS-2016 end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffvos.errors import InputError
from diffvos.evaluation import davis as dv
from diffvos.evaluation.cli import per_sequence_path

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] * 64


def save_p(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), "P")
    im.putpalette(PALETTE)
    im.save(path)


def save_l(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "L").save(path)


def band(h: int, w: int, r0: int, r1: int) -> np.ndarray:
    """Rows r0..r1 (inclusive) set across the full width: boundaries are whole rows only."""
    m = np.zeros((h, w), bool)
    m[r0 : r1 + 1] = True
    return m


# ----------------------------------------------------------------------------- J


def test_jaccard_hand_cases():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True  # 4 px
    pred = np.zeros((4, 4), bool)
    pred[0:2, 1:3] = True  # 4 px, 2 shared
    assert dv.jaccard(gt, pred) == pytest.approx(2 / 6)
    assert dv.jaccard(gt, gt) == 1.0
    assert dv.jaccard(gt, np.zeros_like(gt)) == 0.0
    empty = np.zeros((4, 4), bool)
    assert dv.jaccard(empty, empty) == 1.0  # empty union counts 1
    void = np.zeros((4, 4), bool)
    void[0:2, 2] = True  # covers pred's unshared column
    assert dv.jaccard(gt, pred, void) == pytest.approx(2 / 4)
    # everything void: the union is empty again
    assert dv.jaccard(gt, pred, np.ones((4, 4), bool)) == 1.0


# ----------------------------------------------------------------------------- boundary map


def test_boundary_map_square_offset_towards_origin():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:3] = True
    expected = np.array(
        [[1, 1, 1, 0, 0],
         [1, 0, 1, 0, 0],
         [1, 1, 1, 0, 0],
         [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(dv.boundary_map(m), expected)


def test_boundary_map_image_border_is_not_a_boundary():
    assert not dv.boundary_map(np.ones((5, 7), bool)).any()
    right = np.zeros((3, 3), bool)
    right[:, 2] = True  # last column: only the south neighbour counts there
    np.testing.assert_array_equal(dv.boundary_map(right), [[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    bottom = np.zeros((3, 3), bool)
    bottom[2, :] = True  # last row: only the east neighbour counts there
    np.testing.assert_array_equal(dv.boundary_map(bottom), [[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    corner = np.zeros((3, 3), bool)
    corner[2, 2] = True  # the bottom-right pixel is never a boundary
    np.testing.assert_array_equal(dv.boundary_map(corner), [[0, 0, 0], [0, 1, 1], [0, 1, 0]])


def test_disk_and_tolerance():
    np.testing.assert_array_equal(dv.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        dv.disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]])
    assert dv.boundary_tolerance((60, 80)) == 1  # diagonal 100 -> 0.8 -> 1
    assert dv.boundary_tolerance((100, 100)) == 2  # 141.4 -> 1.13 -> 2
    assert dv.boundary_tolerance((480, 854)) == 8  # 979.6 -> 7.84 -> 8
    assert dv.boundary_tolerance((10, 10), bound_th=3) == 3  # >= 1: pixels


# ----------------------------------------------------------------------------- F


def test_f_measure_tolerance_radius_1_and_2():
    # Full-width bands: the boundary of rows a..b is rows a-1 and b, 'w' pixels each.
    gt = band(60, 80, 20, 39)  # boundary rows 19, 39; radius 1
    assert dv.f_measure(gt, band(60, 80, 21, 40)) == 1.0  # boundary rows 20, 40: 1 px away
    assert dv.boundary_precision_recall(gt, band(60, 80, 22, 41)) == (0.0, 0.0)  # 2 px away
    assert dv.f_measure(gt, band(60, 80, 22, 41)) == 0.0  # P + R = 0
    p, r = dv.boundary_precision_recall(gt, band(60, 80, 20, 41))  # rows 19 (hit), 41 (miss)
    assert (p, r) == (0.5, 0.5)
    two_bands = band(60, 80, 20, 39) | band(60, 80, 50, 54)  # 4 boundary rows, 2 match
    p, r = dv.boundary_precision_recall(gt, two_bands)
    assert (p, r) == (0.5, 1.0)
    assert dv.f_measure(gt, two_bands) == pytest.approx(2 / 3)
    gt2 = band(100, 100, 20, 39)  # radius 2 at this size
    assert dv.f_measure(gt2, band(100, 100, 22, 41)) == 1.0
    assert dv.f_measure(gt2, band(100, 100, 23, 42)) == 0.0


def test_f_measure_degenerate_cases():
    empty = np.zeros((20, 20), bool)
    blob = np.zeros((20, 20), bool)
    blob[5:10, 5:10] = True
    assert dv.boundary_precision_recall(empty, empty) == (1.0, 1.0)
    assert dv.f_measure(empty, empty) == 1.0
    assert dv.boundary_precision_recall(blob, empty) == (1.0, 0.0)  # nothing predicted
    assert dv.f_measure(blob, empty) == 0.0
    assert dv.boundary_precision_recall(empty, blob) == (0.0, 1.0)  # nothing to find
    assert dv.f_measure(empty, blob) == 0.0
    # A full-frame mask has no boundary (the border is not one), so against an empty one it
    # scores F = 1 although J = 0: the benchmark's convention, kept.
    full = np.ones((20, 20), bool)
    assert dv.f_measure(full, empty) == 1.0
    assert dv.jaccard(full, empty) == 0.0


def test_f_measure_void_pixels_removed_before_boundaries():
    gt = band(60, 80, 20, 39)
    pred = band(60, 80, 20, 41)  # extra boundary row 41 -> P = R = 0.5 without void
    void = band(60, 80, 40, 59)  # voiding rows 40.. cuts pred back to rows 20..39
    assert dv.f_measure(gt, pred) == 0.5
    assert dv.f_measure(gt, pred, void) == 1.0


def _brute_bmap(m: np.ndarray) -> np.ndarray:
    h, w = m.shape
    at = lambda y, x: bool(m[y, x]) if y < h and x < w else False  # noqa: E731
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = at(y, x) != at(y, x + 1)
            elif x == w - 1:
                out[y, x] = at(y, x) != at(y + 1, x)
            else:
                out[y, x] = any(at(y, x) != at(y + dy, x + dx) for dy, dx in ((0, 1), (1, 0), (1, 1)))
    return out


def _brute_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """Slow reference: a boundary pixel is matched if one of the other's lies within ``radius``."""
    gb, pb = _brute_bmap(gt), _brute_bmap(pred)
    gpts, ppts = list(zip(*np.nonzero(gb))), list(zip(*np.nonzero(pb)))

    def frac(src, dst):
        hit = sum(any((y - v) ** 2 + (x - u) ** 2 <= radius**2 for v, u in dst) for y, x in src)
        return hit / len(src)

    if not gpts and not ppts:
        return 1.0
    if not gpts or not ppts:
        return 0.0
    p, r = frac(ppts, gpts), frac(gpts, ppts)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@pytest.mark.parametrize("seed", range(6))
def test_boundary_and_f_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 24, 2)
    # smooth-ish random blobs: threshold a box-blurred noise field
    noise = rng.random((h + 4, w + 4))
    blur = sum(noise[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
    gt = blur > 0.5
    pred = np.roll(gt, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2))) ^ (rng.random((h, w)) < 0.05)
    np.testing.assert_array_equal(dv.boundary_map(gt), _brute_bmap(gt))
    np.testing.assert_array_equal(dv.boundary_map(pred), _brute_bmap(pred))
    radius = dv.boundary_tolerance((h, w))
    assert radius == 1
    assert dv.f_measure(gt, pred) == pytest.approx(_brute_f(gt, pred, 1), abs=1e-12)
    assert dv.f_measure(gt, pred, bound_th=2) == pytest.approx(_brute_f(gt, pred, 2), abs=1e-12)
    assert dv.f_measure(gt, pred, bound_th=3) == pytest.approx(_brute_f(gt, pred, 3), abs=1e-12)


# ----------------------------------------------------------------------------- statistics


def test_decay_bins_overlap_like_the_benchmark():
    assert dv.decay_bins(8) == [(0, 3), (2, 5), (4, 6), (5, 8)]  # edges 0,2,4,5,7 (4.5 rounds up)
    assert dv.decay_bins(10) == [(0, 3), (2, 6), (5, 8), (7, 10)]  # edges 0,2,5,7,9
    assert dv.decay_bins(5) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert dv.decay_bins(3) == [(0, 2), (1, 2), (1, 3), (2, 3)]
    assert dv.decay_bins(1) == [(0, 1)] * 4


def test_statistics_hand_cases():
    s = dv.statistics([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert s.mean == pytest.approx(0.55)
    assert s.recall == 0.5  # 0.5 itself is not > 0.5
    assert s.decay == pytest.approx(0.8 - 0.3)  # (0.9+0.8+0.7)/3 - (0.4+0.3+0.2)/3; not 0.85 - 0.25
    s = dv.statistics([i / 10 for i in range(10)])
    assert s.decay == pytest.approx(0.1 - 0.8)  # (0+.1+.2)/3 - (.7+.8+.9)/3
    assert s.recall == 0.4
    assert dv.statistics([0.7]).decay == 0.0


# ----------------------------------------------------------------------------- sequences


def _square(h, w, y, x, s, label=1, base=None):
    m = np.zeros((h, w), np.uint8) if base is None else base.copy()
    m[y : y + s, x : x + s] = label
    return m


def test_first_and_last_frames_not_scored():
    gt = [_square(20, 20, 5, 5, 6)] * 4
    wrong = np.zeros((20, 20), np.uint8)
    objs = dv.evaluate_masks("s", gt, [wrong, gt[1], gt[2], wrong])
    assert len(objs) == 1 and objs[0].name == "s_1"
    np.testing.assert_array_equal(objs[0].j, [1.0, 1.0])
    np.testing.assert_array_equal(objs[0].f, [1.0, 1.0])
    # predictions for the scored frames only give the same
    objs2 = dv.evaluate_masks("s", gt, [gt[1], gt[2]])
    np.testing.assert_array_equal(objs2[0].j, objs[0].j)
    with pytest.raises(InputError, match="at least 3"):
        dv.evaluate_masks("s", gt[:2], gt[:2])


def test_void_counts_as_background_unless_excluded():
    g = _square(8, 8, 2, 2, 2)  # object: 4 px
    g[6, 0:2] = dv.VOID_LABEL  # 2 void px
    first = g.copy()  # void in the first frame is not an object
    pred = _square(8, 8, 2, 2, 2)
    pred[6, 0:2] = 1  # predicted object over the void
    (obj,) = dv.evaluate_masks("v", [first, g, g], [pred, pred, pred])
    assert obj.j[0] == pytest.approx(4 / 6)
    (obj,) = dv.evaluate_masks("v", [first, g, g], [pred, pred, pred], exclude_void=True)
    assert obj.j[0] == 1.0 and obj.f[0] == 1.0


def test_multi_object_and_global_figures():
    h = w = 30
    g = _square(h, w, 2, 2, 6, 1)
    g = _square(h, w, 15, 15, 6, 2, base=g)
    pred = _square(h, w, 2, 2, 6, 1)  # object 2 missed
    objs = dv.evaluate_masks("m", [g] * 3, [pred])
    assert [o.name for o in objs] == ["m_1", "m_2"]
    assert objs[0].j[0] == 1.0 and objs[0].f[0] == 1.0
    assert objs[1].j[0] == 0.0 and objs[1].f[0] == 0.0
    report = dv.Report(objs)
    row = report.global_row()
    assert row["J-Mean"] == 0.5 and row["F-Mean"] == 0.5 and row["J&F-Mean"] == 0.5
    assert row["J-Recall"] == 0.5 and row["J-Decay"] == 0.0
    assert report.sequence_rows() == [("m", 0.5, 0.5)]
    assert dv.global_csv(report) == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "0.500,0.500,0.500,0.000,0.500,0.500,0.000\n")
    assert dv.per_sequence_csv(report) == "Sequence,J-Mean,F-Mean\nm_1,1.000,1.000\nm_2,0.000,0.000\n"
    text = dv.format_report(report)
    assert "  m_1" in text and "  m_2" in text and "J&F-Mean" in text


def test_objects_are_labels_up_to_the_first_frame_maximum():
    # labels {1, 3}: like the benchmark, three objects; the absent 2 scores J = F = 1 when unpredicted
    g = _square(20, 20, 1, 1, 4, 1)
    g = _square(20, 20, 10, 10, 4, 3, base=g)
    objs = dv.evaluate_masks("gap", [g] * 3, [g])
    assert [o.object_id for o in objs] == [1, 2, 3]
    assert objs[1].j[0] == 1.0 and objs[1].f[0] == 1.0
    too_many = _square(20, 20, 15, 1, 3, 4, base=g)
    with pytest.raises(InputError, match="label 4"):
        dv.evaluate_masks("gap", [g] * 3, [too_many])


# ----------------------------------------------------------------------------- files


def test_read_mask_palette_and_greyscale(tmp_path):
    m = _square(10, 12, 2, 3, 4, 1)
    save_p(m, tmp_path / "p.png")
    save_l(m * 255, tmp_path / "l.png")
    idx = _square(10, 12, 6, 6, 2, 2, base=m)
    idx[0, 0] = 255
    save_l(idx, tmp_path / "l_idx.png")
    soft = (m * 200).astype(np.uint8)
    soft[m == 1] = 200
    soft[0, :] = 40  # antialiased greyscale: thresholded at 127
    save_l(soft, tmp_path / "l_soft.png")
    np.testing.assert_array_equal(dv.read_mask(tmp_path / "p.png"), m)
    np.testing.assert_array_equal(dv.read_mask(tmp_path / "l.png"), m)  # 0/255 -> object 1
    np.testing.assert_array_equal(dv.read_mask(tmp_path / "l_idx.png"), idx)
    np.testing.assert_array_equal(dv.read_mask(tmp_path / "l_soft.png"), m)
    # one I/O layer: an RGB mask in DAVIS colours reads as its indices, as the tracker reads it
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1:3, 1:3] = (128, 0, 0)  # DAVIS colour of object 1
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(dv.read_mask(tmp_path / "rgb.png"), (rgb[..., 0] > 0).astype(np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        dv.read_mask(tmp_path / "bad.png")


def _write_sequence(root: Path, pred: Path, seq: str, gts, preds, grey=False):
    for t, g in enumerate(gts):
        (save_l if grey else save_p)(g * (255 if grey else 1), root / "Annotations" / "480p" / seq / f"{t:05d}.png")
    for t, p in preds.items():
        save_p(p, pred / seq / f"{t:05d}.png")


def test_directory_evaluation_and_errors(tmp_path):
    root, pred = tmp_path / "davis", tmp_path / "pred"
    gts = [_square(16, 20, 3, 3 + t, 6) for t in range(5)]
    # predictions omit the first and the last frame; frame 2 is off by one pixel
    preds = {1: gts[1], 2: _square(16, 20, 3, 6, 6), 3: gts[3]}
    _write_sequence(root, pred, "grey", gts, preds, grey=True)
    _write_sequence(root, pred, "pal", gts, preds)
    report = dv.evaluate_davis(pred, root)
    assert report.sequences() == ["grey", "pal"]
    a, b = report.objects
    np.testing.assert_array_equal(a.j, b.j)  # greyscale and palette ground truth agree
    assert a.j.tolist() == [1.0, 30 / 42, 1.0]  # 6x6 squares one column apart: 30 shared of 42
    assert dv.evaluate_davis(pred, root, ["pal"]).sequences() == ["pal"]

    (pred / "pal" / "00002.png").unlink()
    with pytest.raises(InputError, match=r"pal/00002.png.*missing prediction"):
        dv.evaluate_davis(pred, root, ["pal"])
    save_p(np.zeros((16, 21), np.uint8), pred / "pal" / "00002.png")
    with pytest.raises(InputError, match=r"pal/00002.png.*21x16.*20x16"):
        dv.evaluate_davis(pred, root, ["pal"])
    (pred / "pal" / "00002.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match=r"pal/00002.png"):
        dv.evaluate_davis(pred, root, ["pal"])
    with pytest.raises(InputError, match="no ground truth"):
        dv.evaluate_davis(pred, root, ["nope"])
    with pytest.raises(InputError, match="Annotations/480p"):
        dv.evaluate_davis(pred, tmp_path / "elsewhere")


def test_cli_writes_both_csvs_atomically(tmp_path, capsys):
    from diffvos.cli import main

    root, pred = tmp_path / "davis", tmp_path / "pred"
    gts = [_square(16, 20, 3, 3, 6)] * 4
    _write_sequence(root, pred, "one", gts, {1: gts[1], 2: np.zeros((16, 20), np.uint8)})
    out = tmp_path / "res" / "global.csv"  # the folder is created
    assert main(["eval", "--predictions", str(pred), "--annotations", str(root), "--csv", str(out)]) == 0
    assert per_sequence_path(out) == tmp_path / "res" / "global.per-sequence.csv"
    assert out.read_text() == ("J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
                               "0.500,0.500,0.500,1.000,0.500,0.500,1.000\n")
    assert per_sequence_path(out).read_text() == "Sequence,J-Mean,F-Mean\none_1,0.500,0.500\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["global.csv", "global.per-sequence.csv"]
    printed = capsys.readouterr().out
    assert "one" in printed and "0.500" in printed
    # an input error is reported, not raised, and names the file
    assert main(["eval", "--predictions", str(pred), "--annotations", str(root), "--sequences", "two"]) == 1
    assert "two" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the benchmark's figures


def synthetic_sequences(seed: int = 7) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Random elliptical blobs with noisy predictions; one sequence has void speckle."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, (h, w, n, nobj) in enumerate([(37, 53, 10, 3), (60, 81, 8, 2), (41, 29, 7, 1)]):
        yy, xx = np.mgrid[0:h, 0:w]
        gts, preds = [], []
        for t in range(n):
            g = np.zeros((h, w), np.uint8)
            p = np.zeros((h, w), np.uint8)
            for k in range(1, nobj + 1):
                if t > 0 and rng.random() < 0.15:
                    continue
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                a, b = rng.uniform(1.5, h / 3), rng.uniform(1.5, w / 3)
                g[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] = k
                if rng.random() < 0.85:
                    cy, cx = cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)
                    a, b = a * rng.uniform(0.7, 1.3), b * rng.uniform(0.7, 1.3)
                    p[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] = k
            if s == 1:
                g[rng.random((h, w)) < 0.03] = 255
            noise = rng.random((h, w)) < 0.02
            p[noise] = rng.integers(0, nobj + 1, int(noise.sum()))
            gts.append(g)
            preds.append(p)
        out[f"blobs{s}"] = (gts, preds)
    return out


# Computed by running the benchmark's reference code (davis2017-evaluation, semi-supervised task,
# current master) on exactly these sequences written as palette PNGs.
REFERENCE_GLOBAL = [0.366361, 0.460929, 0.613889, 0.091173, 0.271794, 0.083333, -0.013075]
REFERENCE_OBJECTS = {
    "blobs0_1": (0.325395, 0.279157), "blobs0_2": (0.646744, 0.408888),
    "blobs0_3": (0.374751, 0.210051), "blobs1_1": (0.417343, 0.206385),
    "blobs1_2": (0.592324, 0.238968), "blobs2_1": (0.409013, 0.287313),
}
REFERENCE_BLOBS0_1_J = [0.537037, 0.000000, 0.317757, 0.473193, 0.532847, 0.731092, 0.011236, 0.000000]
REFERENCE_BLOBS0_1_F = [0.288679, 0.026316, 0.321932, 0.358159, 0.361916, 0.654444, 0.221811, 0.000000]


def test_matches_reference_implementation_figures(tmp_path):
    root, pred = tmp_path / "davis", tmp_path / "pred"
    for name, (gts, preds) in synthetic_sequences().items():
        _write_sequence(root, pred, name, gts, dict(enumerate(preds)))
    report = dv.evaluate_davis(pred, root)
    np.testing.assert_allclose(list(report.global_row().values()), REFERENCE_GLOBAL, atol=1e-6)
    got = {n: (j, f) for n, j, f in report.object_rows()}
    assert got.keys() == REFERENCE_OBJECTS.keys()
    for n, (j, f) in REFERENCE_OBJECTS.items():
        assert got[n] == pytest.approx((j, f), abs=1e-6), n
    np.testing.assert_allclose(report.objects[0].j, REFERENCE_BLOBS0_1_J, atol=1e-6)
    np.testing.assert_allclose(report.objects[0].f, REFERENCE_BLOBS0_1_F, atol=1e-6)


# ----------------------------------------------------------------------------- DAVIS-2016


def test_davis2016_ground_truth_against_itself_and_shifted(davis_root, tmp_path):
    ann = davis_root / "Annotations" / "480p"
    seqs = ["dog-agility", "rollerblade"]
    same = dv.evaluate_davis(ann, davis_root, seqs)
    row = same.global_row()
    assert row["J-Mean"] == 1.0 and row["F-Mean"] == 1.0 and row["J&F-Mean"] == 1.0
    assert row["J-Decay"] == 0.0 and row["F-Recall"] == 1.0

    pred = tmp_path / "pred"
    figures = []
    for shift in (4, 16):
        for f in sorted((ann / "dog-agility").glob("*.png")):
            m = dv.read_mask(f)
            save_p(np.roll(m, shift, axis=1), pred / str(shift) / "dog-agility" / f.name)
        figures.append(dv.evaluate_davis(pred / str(shift), davis_root).global_row())
    small, large = figures
    assert 0.6 < small["J-Mean"] < 0.99
    assert large["J-Mean"] < small["J-Mean"] and large["F-Mean"] < small["F-Mean"]
    # a 4-px shift stays within the 8-px boundary tolerance, so F barely drops on the 854x480 frames
    assert small["F-Mean"] > 0.9
    assert math.isclose(small["J&F-Mean"], (small["J-Mean"] + small["F-Mean"]) / 2)
