"""The Python embedding API (runtime/api.py): same output as the bare Tracker, every status code,
the threading promise, mid-video objects, introspection and steady-state allocations."""

from __future__ import annotations

import json
import re
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from toy_bundle import make_toy_bundle

from diffvos.runtime import api
from diffvos.runtime.api import Status
from diffvos.runtime.features import FeatureExtractor
from diffvos.runtime.tracker import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples" / "python"))
from synthetic import OBJECTS, clip, iou  # noqa: E402

H, W = 64, 96


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("toy"), height=H, width=W)


@pytest.fixture(scope="module")
def runtime(bundle):
    status, rt = api.runtime_create(bundle, api.RuntimeOptions(backend="cpu"))
    assert status == Status.OK, api.last_error()
    yield rt
    api.runtime_destroy(rt)


@pytest.fixture
def session(runtime):
    status, s = api.session_create(runtime, W, H)
    assert status == Status.OK, api.last_error()
    yield s
    api.session_destroy(s)


def _started(s, frames=None, truths=None):
    frames, truths = (frames, truths) if frames else clip(6)
    assert api.session_add_objects(s, frames[0], truths[0]) == Status.OK, api.session_last_error(s)
    return frames, truths


def _api_run(s, frames, truths, probs=False):
    out = np.zeros((H, W), np.uint8)
    labels, softs = [], []
    assert api.session_add_objects(s, frames[0], truths[0], out) == Status.OK
    labels.append(out.copy())
    for f in frames[1:]:
        p = np.zeros(api.session_info(s)[1].prob_shape, np.float32) if probs else None
        assert api.session_track(s, f, out, p) == Status.OK, api.session_last_error(s)
        labels.append(out.copy())
        softs.append(p)
    return labels, softs


def test_api_output_equals_bare_tracker(bundle, runtime):
    """The API path gives the Tracker's labels (in the caller's ids) and soft masks exactly."""
    frames, truths = clip(8)
    ids = np.array([0, 4, 9], np.uint8)  # caller ids 4, 9 for objects 1, 2
    caller_truth0 = ids[truths[0]]
    tracker = Tracker(FeatureExtractor(bundle, backend="cpu", quiet=True), api._config(api.SessionOptions()))
    expected = [tracker.start(frames[0], truths[0]).labels.copy()]
    soft_expected = []
    for f in frames[1:]:
        r = tracker.step(f)
        expected.append(r.labels)
        soft_expected.append(r.soft)
    _, s = api.session_create(runtime, W, H)
    labels, softs = _api_run(s, frames, [caller_truth0] + truths[1:], probs=True)
    for got, want in zip(labels, expected):
        np.testing.assert_array_equal(got, ids[want])
    for got, want in zip(softs, soft_expected):
        np.testing.assert_array_equal(got, want)
    # RGB frames declared as RGB give the same result
    _, rgb = api.session_create(runtime, W, H, api.SessionOptions(color="RGB"))
    rgb_labels, _ = _api_run(rgb, [f[:, :, ::-1].copy() for f in frames], [caller_truth0] + truths[1:])
    for got, want in zip(rgb_labels, labels):
        np.testing.assert_array_equal(got, want)
    assert api.session_info(s)[1].object_ids == [4, 9]
    api.session_destroy(s)
    api.session_destroy(rgb)


# --- every status code -------------------------------------------------------------------------


def test_status_values_are_stable_and_match_the_header():
    header = (Path(api.__file__).parent / "capi" / "diffvos.h").read_text()
    for st in Status:
        name = "DIFFVOS_OK" if st == Status.OK else f"DIFFVOS_ERR_{st.name}"
        m = re.search(rf"\b{name}\s*=\s*(\d+)", header)
        assert m and int(m.group(1)) == int(st), name
    assert [int(s) for s in Status] == list(range(13))
    assert api.status_string(Status.BUSY) and api.status_string(99) == "unknown status"


def test_null_and_invalid_handles(runtime, session):
    out = np.zeros((H, W), np.uint8)
    frame = np.zeros((H, W, 3), np.uint8)
    assert api.session_track(None, frame, out) == Status.NULL_HANDLE
    assert "None" in api.last_error()
    assert api.runtime_create(None)[0] == Status.NULL_HANDLE
    assert api.session_create(None, W, H)[0] == Status.NULL_HANDLE
    assert api.session_track(runtime, frame, out) == Status.INVALID_HANDLE  # wrong kind
    assert api.session_create(session, W, H)[0] == Status.INVALID_HANDLE
    _, s = api.session_create(runtime, W, H)
    assert api.session_destroy(s) == Status.OK
    for call in (lambda: api.session_track(s, frame, out), lambda: api.session_destroy(s),
                 lambda: api.session_reset(s), lambda: api.session_info(s)[0]):
        assert call() == Status.INVALID_HANDLE
        assert "destroyed" in api.last_error()
    assert api.session_last_error(s) == "the session was destroyed"


def test_invalid_arguments(runtime, session, bundle):
    assert api.runtime_create(bundle, api.RuntimeOptions(backend="gpu9000"))[0] == Status.INVALID_ARGUMENT
    assert "backend" in api.last_error()
    assert api.session_create(runtime, 0, H)[0] == Status.INVALID_ARGUMENT
    assert api.session_create(runtime, W, "64")[0] == Status.INVALID_ARGUMENT
    assert api.session_create(runtime, W, H, api.SessionOptions(color="YUV", topk=0))[0] == Status.INVALID_ARGUMENT
    assert "color" in api.last_error() and "topk" in api.last_error()
    assert api.session_create(runtime, W, H, api.SessionOptions(mag_filter="sometimes"))[0] == Status.INVALID_ARGUMENT
    assert "mag-filter" in api.last_error()
    frames, truths = clip(2)
    empty = np.zeros((H, W), np.uint8)
    assert api.session_add_objects(session, frames[0], empty) == Status.INVALID_ARGUMENT
    assert "no object" in api.session_last_error(session)
    _started(session, frames, truths)
    assert api.session_add_objects(session, frames[1], truths[0]) == Status.INVALID_ARGUMENT  # ids 1, 2 tracked
    assert api.session_remove_object(session, "1") == Status.INVALID_ARGUMENT


def test_buffers_are_checked_and_untouched_on_error(session):
    frames, truths = _started(session)
    good_frame = frames[1]
    out = np.full((H, W), 77, np.uint8)
    bad = [
        (good_frame.astype(np.float32), out, None),
        (good_frame[:, :-1], out, None),
        (good_frame.tolist(), out, None),
        (good_frame, np.zeros((H, W), np.int32), None),
        (good_frame, np.zeros((W, H), np.uint8), None),
        (good_frame, np.zeros((H, W), np.uint8), np.zeros((2, 8, 12), np.float32)),  # K+1 = 3
        (good_frame, np.zeros((H, W), np.uint8), np.zeros((3, 8, 12), np.float64)),
    ]
    for frame, o, p in bad:
        assert api.session_track(session, frame, o, p) == Status.BUFFER
        assert "expected" in api.session_last_error(session)
    readonly = np.zeros((H, W), np.uint8)
    readonly.flags.writeable = False
    assert api.session_track(session, good_frame, readonly) == Status.BUFFER
    assert "read-only" in api.last_error()
    assert (out == 77).all()
    assert api.session_info(session)[1].frames == 1  # nothing was tracked
    assert api.session_track(session, good_frame, out) == Status.OK


def test_bundle_errors(tmp_path, bundle):
    assert api.runtime_create(tmp_path / "missing")[0] == Status.BUNDLE
    assert "does not exist" in api.last_error()
    broken = make_toy_bundle(tmp_path / "broken")
    (broken / "features.onnx").write_bytes(b"not an onnx graph")
    assert api.runtime_create(broken)[0] == Status.BUNDLE  # sha256 differs
    assert "corrupted" in api.last_error()
    # with verification off, ONNX Runtime itself refuses the file
    assert api.runtime_create(broken, api.RuntimeOptions(verify_files=False))[0] == Status.BACKEND
    assert "runtime_create" in api.last_error()


def test_not_started_and_no_such_object(session):
    frames, truths = clip(3)
    out = np.zeros((H, W), np.uint8)
    assert api.session_track(session, frames[0], out) == Status.NOT_STARTED
    _started(session, frames, truths)
    assert api.session_remove_object(session, 9) == Status.NO_SUCH_OBJECT
    assert "9" in api.session_last_error(session)
    assert api.session_remove_object(session, 1) == Status.OK
    assert api.session_remove_object(session, 2) == Status.OK  # the last one: session resets
    assert api.session_track(session, frames[1], out) == Status.NOT_STARTED
    _started(session, frames, truths)
    assert api.session_reset(session) == Status.OK
    assert api.session_track(session, frames[1], out) == Status.NOT_STARTED


class _Boom:
    def __init__(self, exc):
        self.exc = exc

    def __call__(self, *a, **k):
        raise self.exc


@pytest.mark.parametrize(
    "exc, status",
    [(MemoryError(), Status.OUT_OF_MEMORY), (ZeroDivisionError("bug"), Status.INTERNAL)],
)
def test_unexpected_failures_become_statuses(session, monkeypatch, exc, status):
    frames, _ = _started(session)
    monkeypatch.setattr(session._tracker, "step_into", _Boom(exc))
    out = np.zeros((H, W), np.uint8)
    assert api.session_track(session, frames[1], out) == status
    assert type(exc).__name__ in api.session_last_error(session)
    monkeypatch.undo()
    assert api.session_track(session, frames[1], out) == Status.OK  # the session still works


def test_backend_failure_while_tracking(session, monkeypatch):
    frames, _ = _started(session)

    class OrtFail(Exception):
        pass

    OrtFail.__module__ = "onnxruntime.capi.onnxruntime_pybind11_state"
    monkeypatch.setattr(session._tracker, "step_into", _Boom(OrtFail("graph failed")))
    assert api.session_track(session, frames[1], np.zeros((H, W), np.uint8)) == Status.BACKEND
    assert "graph failed" in api.last_error()


# --- threading -----------------------------------------------------------------------------------


def _blocking_step(session, entered: threading.Event, release: threading.Event):
    real = session._tracker.step_into

    def step(*args):
        entered.set()
        release.wait(10)
        return real(*args)

    return step


def test_refuse_mode_returns_busy(runtime, monkeypatch):
    _, s = api.session_create(runtime, W, H, api.SessionOptions(concurrency="refuse"))
    frames, _ = _started(s)
    entered, release = threading.Event(), threading.Event()
    monkeypatch.setattr(s._tracker, "step_into", _blocking_step(s, entered, release))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("a", api.session_track(s, frames[1], np.zeros((H, W), np.uint8))))
    t.start()
    assert entered.wait(10)
    assert api.session_track(s, frames[2], np.zeros((H, W), np.uint8)) == Status.BUSY
    assert "another thread" in api.session_last_error(s)
    release.set()
    t.join()
    assert result["a"] == Status.OK
    assert api.session_info(s)[1].frames == 2  # the refused call changed nothing
    api.session_destroy(s)


def test_one_session_two_threads_is_serialised(session, monkeypatch):
    frames, _ = _started(session, *clip(12))
    real = session._tracker.step_into
    active, peak = [0], [0]
    guard = threading.Lock()

    def step(*args):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(*args)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(session._tracker, "step_into", step)
    statuses = []

    def worker(part):
        out = np.zeros((H, W), np.uint8)
        for f in part:
            statuses.append(api.session_track(session, f, out))

    threads = [threading.Thread(target=worker, args=(frames[1 + i :: 3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [Status.OK] * 11 and peak[0] == 1
    assert api.session_info(session)[1].frames == 12


def test_distinct_sessions_run_concurrently_with_sequential_results(runtime):
    """Four sessions on four threads, sharing one engine, give each the sequential result."""
    streams = [clip(8, objects=(OBJECTS[i % 2],)) for i in range(4)]
    reference = []
    for frames, truths in streams:
        _, s = api.session_create(runtime, W, H)
        reference.append(_api_run(s, frames, truths)[0])
        api.session_destroy(s)
    results = [None] * 4
    barrier = threading.Barrier(4)

    def worker(i):
        _, s = api.session_create(runtime, W, H)
        barrier.wait()
        results[i] = _api_run(s, *streams[i])[0]
        api.session_destroy(s)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, reference):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_destroyed_runtime_leaves_sessions_working(bundle):
    _, rt = api.runtime_create(bundle, api.RuntimeOptions(backend="cpu"))
    _, s = api.session_create(rt, W, H)
    assert api.runtime_destroy(rt) == Status.OK
    assert api.runtime_destroy(rt) == Status.INVALID_HANDLE
    assert api.session_create(rt, W, H)[0] == Status.INVALID_HANDLE
    frames, _ = _started(s)
    assert api.session_track(s, frames[1], np.zeros((H, W), np.uint8)) == Status.OK
    api.session_destroy(s)


# --- objects mid-video, introspection, allocations ----------------------------------------------


def test_object_added_mid_video_is_tracked(session):
    newcomer = (3, (255, 255, 255), (40, 0), (0, 3), 18, 4)
    frames, truths = clip(10, objects=OBJECTS + (newcomer,))
    first = np.where(truths[0] != 3, truths[0], 0).astype(np.uint8)
    assert api.session_add_objects(session, frames[0], first) == Status.OK
    out = np.zeros((H, W), np.uint8)
    for f in frames[1:4]:
        assert api.session_track(session, f, out) == Status.OK
    only3 = np.where(truths[4] == 3, 3, 0).astype(np.uint8)
    assert api.session_add_objects(session, frames[4], only3, out) == Status.OK
    np.testing.assert_array_equal(out[truths[4] == 3], 3)  # the given mask is in the frame's output
    _, info = api.session_info(session)
    assert info.object_ids == [1, 2, 3] and info.prob_shape == (4, H // 8, W // 8)
    scores = []
    for f, truth in zip(frames[5:], truths[5:]):
        assert api.session_track(session, f, out) == Status.OK
        scores.append(iou(out == 3, truth == 3))
    assert min(scores) > 0.4, scores  # followed, not lost
    assert api.session_remove_object(session, 1) == Status.OK
    assert api.session_track(session, frames[-1], out) == Status.OK
    assert 1 not in np.unique(out) and api.session_info(session)[1].object_ids == [2, 3]


def test_introspection(runtime, session, bundle):
    import diffvos

    assert api.version() == diffvos.__version__
    assert "cpu" in api.available_backends()
    status, info = api.runtime_info(runtime)
    assert status == Status.OK and info.provider == "CPUExecutionProvider" and info.backend == "cpu"
    assert info.manifest == json.loads((bundle / "diffvos.json").read_text())
    frames, _ = _started(session)
    assert api.session_track(session, frames[1], np.zeros((H, W), np.uint8)) == Status.OK
    _, sinfo = api.session_info(session)
    assert {"preprocess_ms", "features_ms", "propagate_ms", "postprocess_ms", "total_ms"} <= set(sinfo.timings)
    assert sinfo.timings["total_ms"] >= sinfo.timings["propagate_ms"] > 0
    bank = session._tracker.propagator.bank
    assert sinfo.memory_bytes > bank.nbytes > 0


def test_steady_state_allocates_nothing_that_stays(runtime):
    """After the memory is full, tracking more frames retains no memory (caller buffers reused)."""
    _, s = api.session_create(runtime, W, H, api.SessionOptions(memory=2))
    frames, truths = clip(30)
    out = np.zeros((H, W), np.uint8)
    probs = np.zeros((3, H // 8, W // 8), np.float32)
    _started(s, frames, truths)
    for f in frames[1:6]:
        api.session_track(s, f, out, probs)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for f in frames[6:]:
            assert api.session_track(s, f, out, probs) == Status.OK
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 24 * 1024, f"{grown} bytes retained over 24 frames"  # one label map is 6 KiB
    api.session_destroy(s)


# --- the samples ---------------------------------------------------------------------------------


def test_sample_two_streams(bundle, capsys):
    import two_streams

    results = two_streams.run(str(bundle), frames=6)
    assert [len(v) for v in results.values()] == [6, 6]
    a_frames, a_truths = clip(6)
    np.testing.assert_array_equal(results["a"][0], a_truths[0])  # the given mask comes back on frame 0
    assert iou(results["a"][-1] == 1, a_truths[-1] == 1) > 0.4
    assert "stream a" in capsys.readouterr().out


def test_sample_add_object_midway(bundle, capsys):
    import add_object_midway as sample

    results = sample.run(str(bundle), frames=sample.REMOVE_AT + 2)
    out, truth = results[sample.ADD_AT]
    np.testing.assert_array_equal(out[truth == 3], 3)
    assert iou(results[-1][0] == 3, results[-1][1] == 3) > 0.4
    assert 1 not in np.unique(results[-1][0])  # removed at REMOVE_AT
    assert "session memory" in capsys.readouterr().out


def test_python_conveniences_for_the_cli(bundle):
    from diffvos.runtime.errors import BundleError, InputError
    from diffvos.runtime.propagation import PropagationConfig

    extractor = FeatureExtractor(bundle, backend="cpu", quiet=True)
    status, rt = api.runtime_from_extractor(extractor)
    assert status == Status.OK
    config = PropagationConfig(memory=1, feature_dtype="float32")
    _, s = api.session_create(rt, W, H, api.SessionOptions(propagation=config))
    assert s._tracker.config is config
    assert api.session_create(rt, W, H, api.SessionOptions(propagation="fast"))[0] == Status.INVALID_ARGUMENT
    api.raise_for_status(Status.OK)
    with pytest.raises(InputError, match="no object added"):
        api.raise_for_status(api.session_track(s, np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.uint8)), s)
    with pytest.raises(BundleError, match="does not exist"):
        api.raise_for_status(api.runtime_create(bundle / "nope")[0])
    api.session_destroy(s)
