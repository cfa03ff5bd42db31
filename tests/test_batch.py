"""Several sessions per feature-graph call (``Runtime.step_many``): the same label maps and soft
masks as stepping each session alone, the graph run once per batch (counted through the
engine's public observer hook), streams joining and leaving, bad steps isolated, and bundles
without a stream axis stepped one call each. The references are sessions stepped one by one
with ``Session.step`` on a second runtime of the same bundle."""

from __future__ import annotations

import numpy as np
import pytest

import diffvos
from diffvos.bundle import FEATURES_GRAPH, read_manifest
from diffvos.errors import InputError, InvalidBufferError, NotStartedError
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.session import StreamStep, step_many
from diffvos.sample_clip import moving_squares

H, W = 64, 96
# three objects; object 3 appears at frame 4 (added mid-video from its mask)
OBJECTS = (
    (1, (0, 0, 255), (8, 8), (0, 2), 20, 0),
    (2, (255, 200, 0), (36, 70), (0, -2), 20, 0),
    (3, (200, 0, 200), (40, 10), (-1, 1), 14, 4),
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("toy"), height=H, width=W, alpha_bar=0.9, ensemble=2,
                           max_streams=3)


@pytest.fixture(scope="module")
def clips():
    """Four different clips: shifted starts, so every stream sees its own pictures."""
    out = []
    for k in range(4):
        objs = tuple((oid, c, (y + k, x + 2 * k), d, size, start) for oid, c, (y, x), d, size, start in OBJECTS)
        out.append(moving_squares(12, H, W, objects=objs))
    return out


class CallCounter:
    """Records the batch size of every feature-graph call (the engine's observer hook)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, feed, outputs) -> None:
        self.batches.append(next(iter(outputs.values())).shape[0])


def _first_masks(truth, upto: int = 2):
    """The first frame's mask with objects 1..upto (object 3 is added later)."""
    return np.where(truth <= upto, truth, 0).astype(np.uint8)


def _reference(bundle, clip, schedule, seed):
    """Step one session by itself: schedule[t] = ('start'|'add'|'step'|None) for frame t."""
    frames, truths = clip
    with diffvos.Runtime(bundle, backend="cpu") as rt:
        s = rt.session(W, H, seed=seed)
        labels, probs = [], []
        for t, action in enumerate(schedule):
            if action is None:
                continue
            mask, ids = _mask_for(action, truths[t])
            p = np.zeros((_objects_after(s, action) + 1, *s.grid), np.float32)
            labels.append(s.step(frames[t], mask=mask, object_ids=ids, probs=p).copy())
            probs.append(p)
        return labels, probs


def _objects_after(session, action) -> int:
    return 2 if action == "start" else len(session.info.object_ids) + (1 if action == "add" else 0)


def _mask_for(action, truth):
    if action == "start":
        return _first_masks(truth), None
    if action == "add":
        return np.where(truth == 3, 3, 0).astype(np.uint8), [3]
    return None, None


def test_mixed_batches_equal_stepping_one_by_one(bundle, clips):
    """Four streams at different frame indices: in one call, streams start, add an object
    mid-video and step ordinary frames; a stream leaves and a new one joins later."""
    # frame index each stream is at, per round; None: not in this round
    schedules = {
        0: ["start", "step", "step", "step", "add", "step", "step", "step", None, None],
        1: [None, "start", "step", "step", "step", "add", "step", "step", "step", "step"],
        2: [None, None, None, "start", "step", "step", "add", "step", "step", "step"],
        3: [None, None, None, None, None, None, "start", "step", "step", "step"],
    }
    offsets = {0: 0, 1: 0, 2: 1, 3: 2}  # stream k is at frame round - first round + offset
    seeds = {0: 0, 1: 1, 2: 2, 3: 3}
    counter = CallCounter()
    got = {k: ([], []) for k in schedules}
    with diffvos.Runtime(bundle, backend="cpu") as rt:
        sessions = {k: rt.session(W, H, seed=seeds[k]) for k in schedules}
        frame_of = {k: offsets[k] for k in schedules}
        per_stream_schedule = {k: [] for k in schedules}
        with rt.engines[FEATURES_GRAPH].observe(counter):
            for r in range(10):
                steps, who = [], []
                for k, sched in schedules.items():
                    action = sched[r]
                    if action is None:
                        continue
                    t = frame_of[k]
                    frames, truths = clips[k]
                    mask, ids = _mask_for(action, truths[t])
                    s = sessions[k]
                    p = np.zeros((_objects_after(s, action) + 1, *s.grid), np.float32)
                    steps.append(StreamStep(s, frames[t], mask=mask, object_ids=ids, probs=p))
                    who.append((k, p))
                    per_stream_schedule[k].append((t, action))
                    frame_of[k] += 1
                results = rt.step_many(steps)
                for (k, p), labels in zip(who, results):
                    got[k][0].append(labels.copy())
                    got[k][1].append(p)
                if r == 7:  # stream 0 leaves
                    sessions[0].close()
        # 3 streams per call at most (the bundle's max_streams)
        assert max(counter.batches) == 3
        rounds = [sum(1 for k in schedules if schedules[k][r]) for r in range(10)]
        assert counter.batches == [b for n in rounds for b in ([3] * (n // 3) + ([n % 3] if n % 3 else []))]
    for k in schedules:
        clip_sched = [None] * 12
        for t, action in per_stream_schedule[k]:
            clip_sched[t] = action
        ref_labels, ref_probs = _reference(bundle, clips[k], clip_sched, seeds[k])
        assert len(ref_labels) == len(got[k][0])
        for t, (a, b) in enumerate(zip(ref_labels, got[k][0])):
            np.testing.assert_array_equal(a, b, err_msg=f"stream {k} step {t}")
        for a, b in zip(ref_probs, got[k][1]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        # the tracking itself is sane: object 3 is tracked after it was added
        if "add" in schedules[k]:
            assert 3 in np.unique(got[k][0][-1])


def test_bad_step_changes_nothing_or_is_isolated(bundle, clips):
    frames, truths = clips[0]
    with diffvos.Runtime(bundle, backend="cpu") as rt:
        a, b, c = (rt.session(W, H) for _ in range(3))
        rt.step_many([(a, frames[0], _first_masks(truths[0])), (b, frames[0], _first_masks(truths[0]))])
        before = [s.info.frames for s in (a, b)]
        wrong = np.zeros((H, W + 1, 3), np.uint8)
        with pytest.raises(InvalidBufferError, match="frame"):
            rt.step_many([(a, frames[1]), (b, wrong)])
        with pytest.raises(NotStartedError):
            rt.step_many([(a, frames[1]), (c, frames[1])])
        assert [s.info.frames for s in (a, b)] == before  # nothing changed
        results = rt.step_many([(a, frames[1]), (b, wrong), (c, frames[1])], return_exceptions=True)
        assert isinstance(results[1], InvalidBufferError) and isinstance(results[2], NotStartedError)
        assert results[0].shape == (H, W) and a.info.frames == before[0] + 1 and b.info.frames == before[1]
        solo = rt.session(W, H)
        solo.step(frames[0], mask=_first_masks(truths[0]))
        np.testing.assert_array_equal(solo.step(frames[1]), results[0])
        with pytest.raises(InputError, match="again"):
            rt.step_many([(a, frames[2]), (a, frames[3])])
        with pytest.raises(InputError, match="StreamStep"):
            rt.step_many([(frames[2],)])


def test_bundle_without_stream_axis_steps_one_call_per_stream(tmp_path, clips):
    old = make_toy_bundle(tmp_path / "old", height=H, width=W, alpha_bar=0.9, ensemble=2, max_streams=1)
    manifest = read_manifest(old)
    assert manifest.streams.max_streams == 1 and manifest.graphs["features"].inputs["x_t"][0] == 2
    counter = CallCounter()
    with diffvos.Runtime(old, backend="cpu") as rt:
        sessions = [rt.session(W, H, seed=k) for k in range(3)]
        with rt.engines[FEATURES_GRAPH].observe(counter):
            first = rt.step_many([(s, clips[k][0][0], _first_masks(clips[k][1][0])) for k, s in enumerate(sessions)])
            second = rt.step_many([(s, clips[k][0][1]) for k, s in enumerate(sessions)])
        assert counter.batches == [1] * 6
    for k in range(3):
        ref, _ = _reference(old, clips[k], ["start", "step"], k)
        np.testing.assert_array_equal(ref[0], first[k])
        np.testing.assert_array_equal(ref[1], second[k])


def test_old_manifest_without_streams_field_reads(tmp_path):
    import json

    b = make_toy_bundle(tmp_path / "b", max_streams=1)
    data = json.loads((b / "diffvos.json").read_text())
    del data["streams"]
    (b / "diffvos.json").write_text(json.dumps(data))
    assert read_manifest(b).streams.max_streams == 1
    data["streams"] = {"max_streams": 2, "opt_streams": 3}
    (b / "diffvos.json").write_text(json.dumps(data))
    with pytest.raises(diffvos.BundleError, match="opt_streams"):
        read_manifest(b)


def test_streams_of_two_sizes_share_a_dynamic_bundle(tmp_path):
    dyn = make_toy_bundle(tmp_path / "dyn", height=None, width=None, ensemble=1)
    counter = CallCounter()
    (fa, ta), (fb, tb) = moving_squares(3, 64, 96), moving_squares(3, 96, 128)
    with diffvos.Runtime(dyn, backend="cpu") as rt:
        a1, a2, b1 = rt.session(96, 64), rt.session(96, 64, seed=4), rt.session(128, 96)
        with rt.engines[FEATURES_GRAPH].observe(counter):
            got = step_many([(a1, fa[0], ta[0]), (b1, fb[0], tb[0]), (a2, fa[0], ta[0])])
            got2 = step_many([(a1, fa[1]), (b1, fb[1]), (a2, fa[1])])
        assert sorted(counter.batches) == [1, 1, 2, 2]
        solo = rt.session(128, 96)
        solo.step(fb[0], mask=tb[0])
        np.testing.assert_array_equal(solo.step(fb[1]), got2[1])
        assert got[0].shape == (64, 96) and got[1].shape == (96, 128)


def test_graph_without_a_draw_mean_is_refused():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from diffvos.errors import ExportError
    from diffvos.export.batching import batch_streams

    graph = helper.make_graph([helper.make_node("ReduceMax", ["x_t"], ["features"], axes=[0], keepdims=1)], "g",
                              [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="--max-streams 1"):
        batch_streams(model, 2)
    assert onnx.checker.check_model(model) is None  # left as it was
