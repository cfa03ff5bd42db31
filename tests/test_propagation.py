"""Propagation core: memory bank, windowed top-k kernel, MAG-Filter, pre/post-processing.

References: the published method's outputs (fixtures), a dense numpy transcription of
METHOD.md section 2 written here, torch's bilinear resize and PIL's nearest resize.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffvos.config import PropagationConfig
from diffvos.errors import InputError
from diffvos.runtime.memory import MemoryBank
from diffvos.runtime.postprocess import (
    labels_to_onehot,
    minmax_normalise,
    nearest_indices,
    soft_to_labels,
    upsample_bilinear,
)
from diffvos.runtime.propagation import MagFilter, Propagator, parse_mag_filter


# ---------------------------------------------------------------------------------------------
# independent dense reference (METHOD.md section 2, steps 1-7, written as literally as possible)
def _normalise(f):  # (C, h, w) -> (hw, C)
    v = f.reshape(f.shape[0], -1).T.astype(np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def dense_reference(frames, first_onehot, t, k, r, n_last):
    c, h, w = frames[0].shape
    yy, xx = np.divmod(np.arange(h * w), w)
    window = np.ones((h * w, h * w), bool)
    if r > 0:
        window = (np.abs(yy[:, None] - yy[None]) <= r) & (np.abs(xx[:, None] - xx[None]) <= r)
    mem = [(_normalise(frames[0]), first_onehot.reshape(first_onehot.shape[0], -1))]
    fifo, out = [], []
    for f in frames[1:]:
        q = _normalise(f)
        ctx = mem + fifo
        keys = np.concatenate([m[0] for m in ctx])  # (n*hw, C)
        masks = np.concatenate([m[1] for m in ctx], axis=1)  # (K+1, n*hw)
        a = np.exp(keys @ q.T / t) * np.tile(window, (len(ctx), 1))  # (n*hw, hw)
        kth = -np.sort(-a, axis=0)[k - 1]
        a[a < kth] = 0
        a /= a.sum(axis=0, keepdims=True)
        soft = masks @ a
        out.append(soft.reshape(-1, h, w))
        fifo.append((q, soft))
        if len(fifo) > n_last:
            fifo.pop(0)
    return out


def _run(frames, onehot, cfg):
    p = Propagator(frames.shape[1], frames.shape[2], frames.shape[3], onehot.shape[0], cfg)
    p.start(frames[0], onehot)
    return p, [p.step(f) for f in frames[1:]]


def _random_video(rng, t=6, c=16, h=9, w=11, classes=3):
    frames = rng.standard_normal((t, c, h, w)).astype(np.float32)
    labels = rng.integers(0, classes, (h, w))
    return frames, (labels[None] == np.arange(classes)[:, None, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# fixtures: the published method's own outputs
FLOAT16_SOFT_TOL = {"neighborhood3_topk5": 1e-3, "dense_topk15": 0.05}  # measured 1.3e-4, 2.1e-2


def _fixture(propagation_fixture_dir):
    data = np.load(propagation_fixture_dir / "seed_propagation_golden.npz")
    meta = json.loads((propagation_fixture_dir / "seed_propagation_golden.json").read_text())
    return data, meta


def _fixture_run(data, meta, name, dtype):
    m = meta[name]
    cfg = PropagationConfig(
        temperature=m["temperature"], topk=m["topk"], radius=m["size_mask_neighborhood"],
        memory=m["n_last_frames"], feature_dtype=dtype, mag_filter="off",  # the published loop has none
    )
    feats = data["features"]
    onehot = labels_to_onehot(data["first_labels"], feats.shape[2:], 3)
    _, softs = _run(feats, onehot, cfg)
    return np.stack(softs)


def _near_tie(soft, scale, out_hw, eps=1e-5):
    """Pixels (at the output size) where the two best normalised channels are within eps."""
    up = minmax_normalise(upsample_bilinear(soft, (soft.shape[1] * scale, soft.shape[2] * scale)))
    top = np.sort(up, axis=0)
    gap = top[-1] - top[-2]
    return gap[nearest_indices(gap.shape[0], out_hw[0])[:, None], nearest_indices(gap.shape[1], out_hw[1])[None]] < eps


@pytest.mark.parametrize("name", ["neighborhood3_topk5", "dense_topk15"])
def test_fixture_float32_end_to_end(propagation_fixture_dir, name):
    data, meta = _fixture(propagation_fixture_dir)
    soft = _fixture_run(data, meta, name, "float32")
    ref = data[f"{name}__soft"]
    assert np.abs(soft - ref).max() < 1e-4
    h, w = meta["original_hw"]
    scale = meta["upsample_scale"]
    for t in range(soft.shape[0]):
        labels = soft_to_labels(soft[t], scale, (h, w))
        assert labels.dtype == np.uint8 and labels.shape == (h, w)
        wrong = labels != data[f"{name}__labels"][t]
        assert not (wrong & ~_near_tie(ref[t], scale, (h, w))).any(), f"frame {t + 1}: {wrong.sum()} labels differ"


@pytest.mark.parametrize("name", ["neighborhood3_topk5", "dense_topk15"])
def test_fixture_float16_memory(propagation_fixture_dir, name):
    data, meta = _fixture(propagation_fixture_dir)
    soft = _fixture_run(data, meta, name, "float16")
    ref = data[f"{name}__soft"]
    assert np.abs(soft - ref).max() < FLOAT16_SOFT_TOL[name]
    assert (soft.argmax(1) == ref.argmax(1)).mean() > 0.99
    h, w = meta["original_hw"]
    labels = np.stack([soft_to_labels(s, meta["upsample_scale"], (h, w)) for s in soft])
    assert (labels != data[f"{name}__labels"]).mean() < 1e-3  # measured: 0 and 1 of 187000


# ---------------------------------------------------------------------------------------------
# windowed kernel against the dense reference
@pytest.mark.parametrize(
    "radius,topk,tile,n_last",
    [(1, 3, 1, 2), (2, 5, 3, 3), (3, 7, None, 28), (4, 4, 5, 1), (0, 6, None, 3), (2, 40, 2, 2)],
)
def test_windowed_kernel_matches_dense(radius, topk, tile, n_last):
    rng = np.random.default_rng(radius * 100 + topk)
    frames, onehot = _random_video(rng)
    cfg = PropagationConfig(temperature=0.1, topk=topk, radius=radius, memory=n_last,
                            feature_dtype="float32", tile=tile, mag_filter="off")
    _, got = _run(frames, onehot, cfg)
    want = dense_reference(frames, onehot, 0.1, topk, radius, n_last)
    for g, x in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, x, atol=2e-5)


def test_ties_at_kth_value_are_kept():
    # one-hot features give exactly representable cosines (0 or 1): every key with the same
    # one-hot vector ties with the best, and top-1 must keep all of them
    rng = np.random.default_rng(3)
    h, w, c = 6, 7, 4
    ids = rng.integers(0, c, (4, h, w))
    frames = (np.moveaxis(np.eye(c, dtype=np.float32)[ids], -1, 1)).copy()  # (T, C, h, w)
    labels = rng.integers(0, 3, (h, w))
    onehot = (labels[None] == np.arange(3)[:, None, None]).astype(np.float32)
    for radius in (1, 0):
        cfg = PropagationConfig(topk=1, radius=radius, memory=2, feature_dtype="float32", tile=2, mag_filter="off")
        _, got = _run(frames, onehot, cfg)
        want = dense_reference(frames, onehot, 0.2, 1, radius, 2)
        for g, x in zip(got, want):
            np.testing.assert_allclose(g, x, atol=1e-6)


def test_scratch_is_bounded_not_dense():
    p = Propagator(8, 60, 104, 3, PropagationConfig())
    dense_bytes = 29 * (60 * 104) ** 2 * 4
    assert p.windowed and p.scratch_nbytes < dense_bytes / 50
    assert p.bank.nbytes == 29 * 60 * 104 * (8 * 2 + 3 * 4)


def test_step_errors():
    p = Propagator(4, 3, 5, 2, PropagationConfig(radius=1, topk=2))
    with pytest.raises(InputError):
        p.step(np.zeros((4, 3, 5), np.float32))
    p.start(np.ones((4, 3, 5), np.float32), np.ones((2, 3, 5), np.float32) / 2)
    with pytest.raises(InputError, match="expected"):
        p.step(np.zeros((4, 5, 3), np.float32))
    bad = np.ones((4, 3, 5), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        p.step(bad)


# ---------------------------------------------------------------------------------------------
# MAG-Filter on hand-made correspondences
def _line_memory(query_vec, topk, mag, t=0.2):
    """1x9 grid; memory cell x holds one-hot e_x; cell 0 is object 1, cell 8 object 2."""
    c, w = 9, 9
    first = np.eye(c, dtype=np.float32).reshape(c, 1, w)
    labels = np.zeros((1, w), int)
    labels[0, 0], labels[0, 8] = 1, 2
    onehot = (labels[None] == np.arange(3)[:, None, None]).astype(np.float32)
    query = np.repeat(np.asarray(query_vec, np.float32)[:, None, None], w, axis=2)  # same vector everywhere
    p = Propagator(c, 1, w, 3, PropagationConfig(temperature=t, topk=topk, radius=0, memory=0,
                                                  feature_dtype="float32", mag_filter="off"))
    p.mag_filter = mag  # a filter with parameters the config's string form does not name
    p.start(first, onehot)
    return p, p.step(query)


def test_mag_filter_fixed_radius_drops_long_correspondences():
    vec = np.zeros(9)
    vec[[4, 0, 8]] = [3.0, 2.0, 1.0]  # top-3 keys: cells 4, 0, 8 with cosines 3, 2, 1 / sqrt(14)
    cos = np.array([3.0, 2.0, 1.0]) / np.sqrt(14)
    wts = np.exp(cos / 0.2)
    # query cell 4: offsets 0, 4, 4 -> without the filter all three count
    _, plain = _line_memory(vec, 3, None)
    np.testing.assert_allclose(plain[:, 0, 4], [wts[0], wts[1], wts[2]] / wts.sum(), rtol=1e-5)
    # radius 3: cells 0 and 8 are 4 cells away, dropped -> background only
    _, filt = _line_memory(vec, 3, MagFilter(mode="fixed", radius=3))
    np.testing.assert_allclose(filt[:, 0, 4], [1, 0, 0], atol=1e-7)
    # query cell 0 sees cell 0 (offset 0), 4 (offset 4), 8 (offset 8): radius 4 keeps 0 and 4
    np.testing.assert_allclose(filt[:, 0, 0].sum(), 1, rtol=1e-6)
    _, filt4 = _line_memory(vec, 3, MagFilter(mode="fixed", radius=4))
    np.testing.assert_allclose(filt4[:, 0, 0], [wts[0], wts[1], 0] / wts[:2].sum(), rtol=1e-5)


def test_mag_filter_query_losing_all_keeps_its_best():
    vec = np.zeros(9)
    vec[[0, 8]] = [2.0, 1.0]  # best key cell 0 (object 1), then cell 8 (object 2)
    _, filt = _line_memory(vec, 2, MagFilter(mode="fixed", radius=1))
    np.testing.assert_allclose(filt[:, 0, 4], [0, 1, 0], atol=1e-7)  # both 4 away: keeps cell 0
    np.testing.assert_allclose(filt[:, 0, 0], [0, 1, 0], atol=1e-7)  # cell 0 itself is at offset 0


def test_mag_filter_adaptive_threshold():
    mag = MagFilter(mode="adaptive", percentile=50, multiplier=2.0, floor=1.5)
    assert mag.threshold(np.array([0.0, 1.0, 1.0, 3.0])) == pytest.approx(2.0)
    assert mag.threshold(np.zeros(10)) == pytest.approx(1.5)  # the floor
    # end to end: every query's best match is at offset >= 0; the median top-1 displacement
    # over the 9 queries decides; with queries all pointing at cell 0 the offsets are 0..8
    vec = np.zeros(9)
    vec[[0, 8]] = [2.0, 1.0]
    p, soft = _line_memory(vec, 2, MagFilter(mode="adaptive", percentile=50, multiplier=1.0, floor=0.0))
    assert p.last_threshold == pytest.approx(4.0)  # median of |x - 0| for x = 0..8
    np.testing.assert_allclose(soft[:, 0, 8], [0, 0, 1], atol=1e-7)  # cell 8: key 8 at 0, key 0 at 8 > 4
    with pytest.raises(InputError):
        MagFilter(mode="nearest")


# ---------------------------------------------------------------------------------------------
# memory bank
def test_memory_bank_ring_and_no_growth():
    bank = MemoryBank(2, 3, 4, 2, capacity=3)
    assert bank.features.dtype == np.float16 and len(bank) == 0
    feats_id, masks_id = id(bank.features), id(bank.masks)
    mask = np.zeros((2, 2, 3), np.float32)
    bank.set_first(np.full((4, 2, 3), 2.0, np.float32), mask)
    np.testing.assert_allclose(np.linalg.norm(bank.features[0].astype(np.float32), axis=-1), 1, atol=1e-3)
    for i in range(5):
        bank.push(np.full((4, 2, 3), i + 1.0, np.float32), mask + i)
    assert len(bank) == 4  # first + 3
    slots = bank.context_slots()
    assert slots[0] == 0
    assert [bank.masks[s, 0, 0, 0] for s in slots[1:]] == [2.0, 3.0, 4.0]  # oldest to newest
    assert id(bank.features) == feats_id and id(bank.masks) == masks_id
    assert bank.nbytes == 4 * 6 * (4 * 2 + 2 * 4)
    bank.reset()
    assert len(bank) == 0 and len(bank.context_slots()) == 0
    with pytest.raises(InputError):
        bank.push(np.ones((4, 2, 3), np.float32), mask)
    with pytest.raises(InputError, match="expected"):
        bank.set_first(np.ones((5, 2, 3), np.float32), mask)


def test_memory_bank_objects_appear_and_vanish():
    bank = MemoryBank(1, 2, 3, 2, capacity=2, feature_dtype=np.float32)
    m = np.array([[[0.25, 1.0]], [[0.75, 0.0]]], np.float32)  # (2, 1, 2)
    bank.set_first(np.ones((3, 1, 2), np.float32), m)
    bank.push(np.ones((3, 1, 2), np.float32), m)
    bank.add_objects(2)
    assert bank.num_classes == 4
    np.testing.assert_array_equal(bank.masks[:2, ..., 2:], 0)
    np.testing.assert_array_equal(bank.masks[0, ..., :2], np.moveaxis(m, 0, -1))
    bank.remove_object(1)
    assert bank.num_classes == 3
    np.testing.assert_allclose(bank.masks[0, 0, :, 0], [1.0, 1.0])  # object 1's mass joined the background
    with pytest.raises(InputError):
        bank.remove_object(0)
    p = Propagator(3, 1, 2, 2, PropagationConfig(radius=0, topk=1, memory=1))
    p.start(np.ones((3, 1, 2), np.float32), m)
    p.add_objects(1)
    assert p.step(np.ones((3, 1, 2), np.float32)).shape == (3, 1, 2)


# ---------------------------------------------------------------------------------------------
# pre/post-processing against PIL and torch
@pytest.mark.parametrize("src,dst", [((100, 170), (12, 20)), ((480, 854), (60, 104)), ((7, 5), (13, 11)), ((96, 160), (100, 170))])
def test_nearest_matches_pil(src, dst):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, src).astype(np.uint8)
    pil = np.array(Image.fromarray(labels).resize(dst[::-1], Image.NEAREST))
    onehot = labels_to_onehot(labels, dst, 4)
    assert onehot.shape == (4,) + dst and onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot.argmax(0), pil)
    np.testing.assert_array_equal(onehot.sum(0), 1)


def test_labels_to_onehot_rejects_bad_ids():
    with pytest.raises(InputError, match="ids"):
        labels_to_onehot(np.full((4, 4), 3, np.uint8), (2, 2), 3)


@pytest.mark.parametrize("src,dst", [((12, 20), (96, 160)), ((5, 7), (40, 56)), ((6, 9), (31, 50))])
def test_bilinear_matches_torch(src, dst):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    soft = rng.random((3,) + src).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(soft)[None], size=dst, mode="bilinear",
                                           align_corners=False)[0].numpy()
    np.testing.assert_allclose(upsample_bilinear(soft, dst), want, atol=1e-6)


def test_soft_to_labels_matches_torch_and_pil_pipeline():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    soft = rng.random((3, 6, 10)).astype(np.float32)
    soft[2] = 0  # an empty channel stays as is
    up = torch.nn.functional.interpolate(torch.from_numpy(soft)[None], scale_factor=8, mode="bilinear",
                                         align_corners=False)[0]
    for c in range(up.shape[0]):
        if up[c].max() > 0:
            up[c] = (up[c] - up[c].min()) / (up[c] - up[c].min()).max()
    want = np.array(Image.fromarray(up.argmax(0).numpy().astype(np.uint8)).resize((83, 53), Image.NEAREST))
    got = soft_to_labels(soft, 8, (53, 83))
    assert got.dtype == np.uint8
    assert (got != want).mean() < 1e-3  # only float near-ties may differ


def test_minmax_normalise_rules():
    maps = np.stack([np.array([[1.0, 3.0]]), np.zeros((1, 2)), np.array([[-2.0, -1.0]]), np.full((1, 2), 0.5)])
    out = minmax_normalise(maps.astype(np.float32))
    np.testing.assert_allclose(out[0], [[0, 1]])
    np.testing.assert_allclose(out[1], 0)  # max 0: left as is
    np.testing.assert_allclose(out[2], [[-2, -1]])  # max < 0: left as is
    np.testing.assert_allclose(out[3], 0)  # constant positive: no information


def test_one_propagation_default_reaches_every_path():
    """Defect: PropagationConfig().mag_filter was None while the CLI and the API used 12 cells."""
    from diffvos.config import SessionConfig

    assert PropagationConfig().mag_filter == "12"
    assert SessionConfig().propagation == PropagationConfig()
    p = Propagator(4, 3, 5, 2)  # no config at all: the users' default, MAG-Filter included
    assert p.mag_filter == MagFilter(mode="fixed", radius=12.0)
    assert parse_mag_filter("off") is None and parse_mag_filter("adaptive").mode == "adaptive"
    with pytest.raises(InputError, match="mag_filter"):
        PropagationConfig(mag_filter="sideways")
