"""Zero-shot video semantic segmentation: K-means and the silhouette rule, the KNN scene-context
model, the segment session on a clip with exact truth, the segment scores (Hungarian matching,
flip rate) on hand-computed cases, and the CLI (segment, eval --mode segments, bench segments)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffvos.cli import main
from diffvos.config import SegmentConfig
from diffvos.errors import InputError
from diffvos.evaluation.segments import score_segments
from diffvos.runtime.segment import (
    SceneContext,
    balanced_sample,
    choose_k,
    kmeans,
    silhouette,
)

pytest.importorskip("scipy")


def _blobs(rng, centres, per=60, spread=0.05):
    x = np.concatenate([c + spread * rng.normal(size=(per, len(c))) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(len(centres)), per)


def _same_partition(a, b):
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    x, truth = _blobs(rng, np.eye(4)[:3] * 1.0)
    labels, centres = kmeans(x, 3, seed=1)
    assert _same_partition(labels, truth)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(kmeans(x, 3, seed=1)[0], labels)
    with pytest.raises(InputError, match="cannot make 500 segments"):
        kmeans(x, 500)


def test_silhouette_matches_the_definition_computed_point_by_point():
    rng = np.random.default_rng(1)
    x, _ = _blobs(rng, np.eye(3) * 1.0, per=7, spread=0.4)
    labels = rng.integers(0, 3, len(x))
    labels[0] = 2  # make sure every cluster exists
    labels[1], labels[2] = 0, 1
    ref = []
    for i in range(len(x)):
        d = [1 - float(x[i] @ x[j]) for j in range(len(x))]
        own = [d[j] for j in range(len(x)) if labels[j] == labels[i] and j != i]
        if not own:
            ref.append(0.0)
            continue
        a = sum(own) / len(own)
        b = min(np.mean([d[j] for j in range(len(x)) if labels[j] == c]) for c in set(labels.tolist()) - {labels[i]})
        ref.append((b - a) / max(a, b))
    assert silhouette(x, labels) == pytest.approx(float(np.mean(ref)), abs=1e-5)


def test_silhouette_rule_picks_the_number_of_clusters():
    rng = np.random.default_rng(2)
    x, _ = _blobs(rng, np.eye(5)[:4] * 1.0, per=40)
    k, scores = choose_k(x, 6, seed=0)
    assert k == 4 and sorted(scores) == [2, 3, 4, 5, 6]


def test_scene_context_votes_like_a_brute_force_knn():
    rng = np.random.default_rng(3)
    cfg = SegmentConfig(knn=5, knn_temperature=0.2, anchor_vectors=40, frame_vectors=10, context_frames=2)
    mem, labels = _blobs(rng, np.eye(3) * 1.0, per=30, spread=0.6)
    ctx = SceneContext(3, 3, cfg, seed=0)
    ctx.start(mem, labels)
    assert ctx.count == 40 and np.bincount(ctx.labels[:40]).tolist() in ([14, 13, 13], [13, 14, 13], [13, 13, 14])
    q, _ = _blobs(rng, np.eye(3) * 1.0, per=4, spread=0.6)
    got = ctx.predict(q)
    stored, slabels = ctx.vectors[: ctx.count], ctx.labels[: ctx.count]
    for i, v in enumerate(q):
        sims = stored @ v
        top = np.argsort(-sims)[:5]
        w = np.exp((sims[top] - sims[top].max()) / 0.2)
        ref = np.array([w[slabels[top] == c].sum() for c in range(3)]) / w.sum()
        np.testing.assert_allclose(got[:, i], ref, rtol=1e-5)
    for _ in range(3):  # the FIFO keeps the budget: anchors + 2 frames
        ctx.update(q, np.arange(len(q)) % 3)
    assert ctx.count == 40 + 2 * 10


def test_balanced_sample_shares_out_evenly():
    labels = np.array([0] * 100 + [1] * 5 + [2] * 50)
    idx = balanced_sample(labels, 30, np.random.default_rng(0))
    assert len(idx) == len(set(idx.tolist())) == 30
    assert np.bincount(labels[idx]).tolist() == [13, 5, 12] or np.bincount(labels[idx]).tolist() == [12, 5, 13]


# ------------------------------------------------------------------------------------- scores


def test_segment_scores_on_a_hand_computed_video():
    gt = [np.array([[1, 1, 0, 0], [2, 2, 0, 255]], np.uint8), np.array([[1, 1, 0, 0], [2, 2, 0, 0]], np.uint8)]
    pred = [np.array([[5, 5, 5, 3], [4, 4, 3, 3]], np.uint8), np.array([[5, 3, 3, 3], [4, 4, 3, 3]], np.uint8)]
    s = score_segments("v", gt, pred)
    assert s.objects == [1, 2] and s.segments == 3
    # video IoU: object 1 vs segment 5: inter 3, union 4 + 4 - 3 = 5; object 2 vs segment 4: 4/4
    assert s.matches == {1: 5, 2: 4}
    assert s.video_iou[1] == pytest.approx(3 / 5) and s.video_iou[2] == pytest.approx(1.0)
    assert s.j_mean[1] == pytest.approx((2 / 3 + 1 / 2) / 2)  # frame 0: void pixel left out
    # one frame pair: pixels (0,1) and (0,2) change -> 2 of 8; static gt pixels: 7 (void excluded), 2 change
    assert s.flip == pytest.approx(2 / 8) and s.flip_static == pytest.approx(2 / 7)


def test_hungarian_matching_is_the_best_one_to_one_assignment():
    rng = np.random.default_rng(4)
    gt = [rng.integers(0, 4, (12, 12)).astype(np.uint8) for _ in range(3)]
    pred = [((g + rng.integers(0, 2, g.shape)) % 5 + 1).astype(np.uint8) for g in gt]
    s = score_segments("r", gt, pred)
    def video_iou(o, seg):
        i = sum(np.count_nonzero((g == o) & (p == seg)) for g, p in zip(gt, pred))
        u = sum(np.count_nonzero((g == o) | (p == seg)) for g, p in zip(gt, pred))
        return i / u
    best = max(itertools.permutations(range(1, 6), 3),
               key=lambda segs: sum(video_iou(o, sg) for o, sg in zip((1, 2, 3), segs)))
    assert sum(s.video_iou.values()) == pytest.approx(sum(video_iou(o, sg) for o, sg in zip((1, 2, 3), best)))


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    pytest.importorskip("onnx")
    from diffvos.export.toy import make_toy_bundle

    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle")


# squares on the stride-8 grid, moving a whole cell per frame: every feature cell is one colour
ALIGNED = ((1, (0, 0, 255), (8, 8), (0, 8), 24, 0), (2, (255, 200, 0), (32, 64), (0, -8), 24, 0))


def test_segment_session_finds_the_objects_and_keeps_their_ids(toy):
    import diffvos
    from diffvos.runtime.segment import SegmentSession
    from diffvos.sample_clip import moving_squares

    frames, masks = moving_squares(8, objects=ALIGNED)
    runtime = diffvos.Runtime(toy, backend="cpu")
    stream = SegmentSession(runtime, 96, 64, SegmentConfig(max_segments=5))
    out = [stream.step(f) for f in frames]
    assert stream.k == 3  # background and two coloured squares, by the silhouette rule
    s = score_segments("squares", masks, out)
    assert min(s.j_mean.values()) > 0.6 and s.video_iou[1] > 0.6
    assert len({s.matches[1], s.matches[2]}) == 2
    assert s.flip_static < 0.05
    probs = np.empty(stream.prob_shape, np.float32)
    stream.step(frames[0], probs=probs)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)


def _davis_layout(root, frames, masks):
    from PIL import Image

    from diffvos.io.masks import encode_indexed_png

    (root / "JPEGImages/480p/sq").mkdir(parents=True)
    (root / "Annotations/480p/sq").mkdir(parents=True)
    for i, (f, m) in enumerate(zip(frames, masks)):
        Image.fromarray(f[:, :, ::-1]).save(root / f"JPEGImages/480p/sq/{i:05d}.png")
        (root / f"Annotations/480p/sq/{i:05d}.png").write_bytes(encode_indexed_png(m))


def test_segment_cli_then_eval_segments(toy, tmp_path, capsys):
    from diffvos.sample_clip import moving_squares

    frames, masks = moving_squares(6)
    _davis_layout(tmp_path / "davis", frames, masks)
    out = tmp_path / "pred" / "sq"
    rc = main(["segment", "--bundle", str(toy), "--input", str(tmp_path / "davis/JPEGImages/480p/sq"),
               "--segments", "3", "--output", str(out), "--overlay", str(tmp_path / "o.mp4"), "--no-progress",
               "--backend", "cpu"])
    assert rc == 0 and "into 3 segments" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{i:05d}.png" for i in range(6)]
    assert (tmp_path / "o.mp4").stat().st_size > 0
    rc = main(["eval", "--mode", "segments", "--predictions", str(tmp_path / "pred"), "--annotations",
               str(tmp_path / "davis"), "--csv", str(tmp_path / "s.csv")])
    text = capsys.readouterr().out
    assert rc == 0 and "global" in text and "flip" in text
    assert (tmp_path / "s.csv").read_text().startswith("Sequence,Object,Segment,J-Mean")
    rc = main(["bench", "segments", "--bundle", str(toy), "--davis", str(tmp_path / "davis"),
               "--output", str(tmp_path / "bench"), "--no-progress", "--segments", "3", "--backend", "cpu"])
    assert rc == 0 and "sq" in capsys.readouterr().out
    # the output policy, as for track: nothing replaced without --force, which then replaces whole
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "mine.txt").write_text("keep")
    segment = ["segment", "--bundle", str(toy), "--input", str(tmp_path / "davis/JPEGImages/480p/sq"),
               "--segments", "2", "--output", str(out), "--no-progress", "--backend", "cpu"]
    assert main(segment) == 1 and "not empty" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == set(before) | {"mine.txt"}
    inside = ["segment", "--bundle", str(toy), "--input", str(tmp_path / "davis/JPEGImages/480p/sq"),
              "--output", str(tmp_path / "davis/JPEGImages/480p/sq/seg"), "--no-progress"]
    assert main(inside) == 1 and "inside" in capsys.readouterr().err
    assert main(segment + ["--force"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{i:05d}.png" for i in range(6)]  # replaced whole


def test_segment_refuses_bad_options_and_attention_bundles(toy, tmp_path, capsys):
    rc = main(["segment", "--bundle", str(toy), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
               "--knn", "0"])
    assert rc == 1 and "--knn must be an integer >= 1" in capsys.readouterr().err
    import dataclasses

    import diffvos
    from diffvos.bundle import Affinity, read_manifest
    from diffvos.runtime.segment import SegmentSession

    m = read_manifest(toy)
    runtime = diffvos.Runtime(toy, backend="cpu")
    runtime.manifest = dataclasses.replace(m, channels=16, affinity=Affinity("attention", 2, 4))
    with pytest.raises(InputError, match="feature map"):
        SegmentSession(runtime, 96, 64)
