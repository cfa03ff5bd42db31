"""The Python API (``diffvos.Runtime`` / ``Session.step``): output equal to the stages composed by
hand, typed exceptions with no side effect, the threading promise, mid-video objects,
introspection, steady-state allocations and the samples. Engines are injected through the
runtime's loaders, never patched."""

from __future__ import annotations

import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import diffvos
from diffvos.config import PROPAGATION_KERNELS
from diffvos.errors import (
    BackendError,
    BundleError,
    BusyError,
    ClosedError,
    InputError,
    InvalidBufferError,
    NoSuchObjectError,
    NotStartedError,
)
from diffvos.evaluation.davis import jaccard
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.engine import EngineBase
from diffvos.runtime.features import Features
from diffvos.runtime.ort_engine import OrtLoader
from diffvos.runtime.postprocess import labels_to_onehot, soft_to_labels
from diffvos.runtime.propagation import Propagator
from diffvos.sample_clip import SQUARES, moving_squares

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples" / "python"))

H, W = 64, 96


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("toy"), height=H, width=W, alpha_bar=0.9, ensemble=2)


@pytest.fixture(scope="module")
def runtime(bundle):
    with diffvos.Runtime(bundle, backend="cpu") as rt:
        yield rt


def _run(session, frames, first, probs=False):
    labels, softs = [session.step(frames[0], mask=first).copy()], []
    for f in frames[1:]:
        p = np.zeros(session.info.prob_shape, np.float32) if probs else None
        labels.append(session.step(f, probs=p).copy())
        softs.append(p)
    return labels, softs


class CountingEngine(EngineBase):
    """Wraps a real engine: counts calls and, optionally, waits inside ``infer`` (threading tests)."""

    def __init__(self, inner, gate: threading.Event | None = None, entered: threading.Event | None = None):
        super().__init__()
        self.inner, self.gate, self.entered = inner, gate, entered
        self.calls, self.active, self.peak = 0, 0, 0
        self._lock = threading.Lock()
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.provider, self.providers = inner.provider, inner.providers

    def _run(self, feed):
        with self._lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if self.entered is not None:
                self.entered.set()
            if self.gate is not None:
                assert self.gate.wait(10)
            return self.inner.infer(feed)
        finally:
            with self._lock:
                self.active -= 1

    def close(self):
        self.inner.close()


def _counting_runtime(bundle, **kw):
    engine = CountingEngine(OrtLoader(bundle / "features.onnx", backend="cpu")(), **kw)
    return diffvos.Runtime(bundle, loaders={"features": lambda: engine}), engine


def test_step_equals_the_stages_composed_by_hand(bundle, runtime):
    """The session's labels (in the caller's ids) and soft masks are the stages' output exactly."""
    frames, truths = moving_squares(8)
    ids = np.array([0, 4, 9], np.uint8)  # caller ids 4, 9 for objects 1, 2
    session = runtime.session(W, H, propagation_kernel="numpy")  # the graph: tests/test_propagation_graph.py
    labels, softs = _run(session, frames, ids[truths[0]], probs=True)
    # by hand: features -> propagation -> labels, channels mapped to ids at the end
    features = Features(runtime.manifest, runtime.engines)
    f0 = features(frames[0])
    prop = Propagator(*f0.shape, 3)
    prop.start(f0, labels_to_onehot(truths[0], f0.shape[1:], 3))
    np.testing.assert_array_equal(labels[0], ids[truths[0]])
    for frame, got, got_soft in zip(frames[1:], labels[1:], softs):
        soft = prop.step(features(frame))
        np.testing.assert_array_equal(got_soft, soft)
        np.testing.assert_array_equal(got, ids[soft_to_labels(soft, 8, (H, W))])
    assert session.info.object_ids == [4, 9]
    # RGB frames declared as RGB give the same result
    rgb = runtime.session(W, H, color="RGB", propagation_kernel="numpy")
    rgb_labels, _ = _run(rgb, [np.ascontiguousarray(f[:, :, ::-1]) for f in frames], ids[truths[0]])
    for got, want in zip(rgb_labels, labels):
        np.testing.assert_array_equal(got, want)


def test_each_stage_once_per_frame_and_no_extra_buffers(bundle):
    """Defect: an RGB caller's frame was reversed twice (the API copied it to BGR, preprocessing
    reversed it again) and the labels went through three buffers. Now the session holds no frame
    or label buffer of its own, the engine runs once per frame and ``out`` is written in place."""
    rt, engine = _counting_runtime(bundle)
    frames, truths = moving_squares(5)
    sizes = {}
    for color in ("BGR", "RGB"):
        s = rt.session(W, H, color=color)
        clip = frames if color == "BGR" else [np.ascontiguousarray(f[:, :, ::-1]) for f in frames]
        out = np.zeros((H, W), np.uint8)
        before = engine.calls
        assert s.step(clip[0], out, mask=truths[0]) is out
        for f in clip[1:]:
            assert s.step(f, out) is out
        assert engine.calls - before == len(frames)
        p = s.propagator
        sizes[color] = s.info.memory_bytes
        assert sizes[color] == s.features.nbytes + p.bank.nbytes + p.scratch_nbytes + s.objects.lut.nbytes
    assert sizes["RGB"] == sizes["BGR"]


def test_typed_exceptions_and_nothing_changes(runtime, bundle, tmp_path):
    with pytest.raises(InputError, match="backend"):
        diffvos.Runtime(bundle, backend="gpu9000")
    with pytest.raises(InputError, match="width"):
        runtime.session(0, H)
    with pytest.raises(InputError, match="height"):
        runtime.session(W, "64")
    with pytest.raises(InputError, match="color.*topk|topk.*color"):
        runtime.session(W, H, color="YUV", topk=0)
    with pytest.raises(InputError, match="mag_filter"):
        runtime.session(W, H, mag_filter="sometimes")
    with pytest.raises(InputError, match="unknown session option"):
        runtime.session(W, H, memroy=3)
    s = runtime.session(W, H)
    frames, truths = moving_squares(3)
    with pytest.raises(NotStartedError):
        s.step(frames[0])
    with pytest.raises(InputError, match="no object"):
        s.step(frames[0], mask=np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match="not in the mask"):
        s.step(frames[0], mask=truths[0], object_ids=[7])
    s.step(frames[0], mask=truths[0])
    with pytest.raises(InputError, match="tracked already"):
        s.step(frames[1], mask=truths[0])
    with pytest.raises(InputError, match="object id"):
        s.remove("1")
    with pytest.raises(NoSuchObjectError, match="9"):
        s.remove(9)
    out = np.full((H, W), 77, np.uint8)
    readonly = np.zeros((H, W), np.uint8)
    readonly.flags.writeable = False
    bad = [
        dict(frame=frames[1].astype(np.float32), out=out),
        dict(frame=frames[1][:, :-1], out=out),
        dict(frame=frames[1].tolist(), out=out),
        dict(frame=frames[1], out=np.zeros((H, W), np.int32)),
        dict(frame=frames[1], out=np.zeros((W, H), np.uint8)),
        dict(frame=frames[1], out=np.zeros((H, W), np.uint8), probs=np.zeros((2, 8, 12), np.float32)),  # K+1 = 3
        dict(frame=frames[1], out=np.zeros((H, W), np.uint8), probs=np.zeros((3, 8, 12), np.float64)),
        dict(frame=frames[1], out=readonly),
        dict(frame=frames[1], out=np.zeros((W, H), np.uint8).T),  # right shape, not C-contiguous
    ]
    for kw in bad:
        with pytest.raises(InvalidBufferError):
            s.step(**kw)
    assert (out == 77).all() and s.info.frames == 1  # nothing was tracked
    assert s.step(frames[1], out) is out
    s.close()
    with pytest.raises(ClosedError):
        s.step(frames[2], out)
    with pytest.raises(BundleError, match="does not exist"):
        diffvos.Runtime(tmp_path / "missing")
    broken = make_toy_bundle(tmp_path / "broken")
    (broken / "features.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match="corrupted"):
        diffvos.Runtime(broken)  # sha256 differs
    with pytest.raises(BackendError):
        diffvos.Runtime(broken, verify_files=False)  # ONNX Runtime itself refuses the file


def test_refuse_mode_raises_busy(bundle):
    gate, entered = threading.Event(), threading.Event()
    rt, _ = _counting_runtime(bundle, gate=gate, entered=entered)
    s = rt.session(W, H, concurrency="refuse")
    frames, truths = moving_squares(3)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("labels", s.step(frames[0], mask=truths[0])))
    t.start()
    assert entered.wait(10)
    with pytest.raises(BusyError, match="another thread"):
        s.step(frames[1])
    gate.set()
    t.join()
    assert result["labels"].shape == (H, W) and s.info.frames == 1  # the refused call changed nothing


def test_one_session_two_threads_is_serialised(bundle):
    rt, engine = _counting_runtime(bundle)
    frames, truths = moving_squares(12)
    s = rt.session(W, H)
    s.step(frames[0], mask=truths[0])

    def worker(part):
        out = np.zeros((H, W), np.uint8)
        for f in part:
            s.step(f, out)

    threads = [threading.Thread(target=worker, args=(frames[1 + i :: 3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.peak == 1 and s.info.frames == 12


def test_distinct_sessions_run_concurrently_with_sequential_results(runtime):
    """Four sessions on four threads, sharing one engine, give each the sequential result."""
    streams = [moving_squares(8, objects=(SQUARES[i % 2],)) for i in range(4)]
    reference = [_run(runtime.session(W, H), f, t[0])[0] for f, t in streams]
    results = [None] * 4
    barrier = threading.Barrier(4)

    def worker(i):
        s = runtime.session(W, H)
        barrier.wait()
        results[i] = _run(s, streams[i][0], streams[i][1][0])[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, reference):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_closed_runtime_leaves_sessions_working(bundle):
    rt = diffvos.Runtime(bundle, backend="cpu")
    s = rt.session(W, H)
    rt.close()
    with pytest.raises(ClosedError):
        rt.session(W, H)
    frames, truths = moving_squares(2)
    s.step(frames[0], mask=truths[0])
    assert s.step(frames[1]).shape == (H, W)


@pytest.mark.parametrize("kernel", PROPAGATION_KERNELS)
def test_object_added_mid_video_is_tracked(runtime, kernel):
    newcomer = (3, (255, 255, 255), (40, 0), (0, 3), 18, 4)
    frames, truths = moving_squares(10, objects=SQUARES + (newcomer,))
    s = runtime.session(W, H, propagation_kernel=kernel)
    s.step(frames[0], mask=truths[0], object_ids=[1, 2])
    for f in frames[1:4]:
        s.step(f)
    out = s.step(frames[4], mask=truths[4], object_ids=[3])
    np.testing.assert_array_equal(out[truths[4] == 3], 3)  # the given mask is in the frame's output
    info = s.info
    assert info.object_ids == [1, 2, 3] and info.prob_shape == (4, H // 8, W // 8)
    assert len(s.propagator.bank) == 1 + 4  # first frame + four remembered frames, the added one once
    slot = s.propagator.bank.context_slots()[-1]
    remembered = np.asarray(s.propagator.bank.masks[slot])  # (h, w, K+1) of the frame the object was added on
    np.testing.assert_allclose(remembered.sum(-1), 1.0, atol=1e-6)
    assert (remembered[..., 3] > 0.5).any()
    scores = [jaccard(s.step(f) == 3, truth == 3) for f, truth in zip(frames[5:], truths[5:])]
    assert min(scores) > 0.4, scores  # followed, not lost
    s.remove(1)
    out = s.step(frames[-1])
    assert 1 not in np.unique(out) and s.info.object_ids == [2, 3]
    s.remove(2)
    s.remove(3)  # the last one: the session resets
    with pytest.raises(NotStartedError):
        s.step(frames[0])
    with pytest.raises(InputError, match="memory=0"):
        s0 = runtime.session(W, H, memory=0)
        s0.step(frames[0], mask=truths[0], object_ids=[1])
        s0.step(frames[4], mask=truths[4], object_ids=[3])


def test_introspection(runtime, bundle):
    import json

    info = runtime.info
    assert info.version == diffvos.__version__ and info.provider == "CPUExecutionProvider" and info.backend == "cpu"
    assert info.manifest == json.loads((bundle / "diffvos.json").read_text())
    assert runtime.notes == []  # the CPU was asked for: nothing fell back
    s = runtime.session(W, H)
    frames, truths = moving_squares(2)
    s.step(frames[0], mask=truths[0])
    s.step(frames[1])
    t = s.info.timings
    assert {"preprocess_ms", "features_ms", "propagate_ms", "postprocess_ms", "total_ms"} <= set(t)
    assert t["total_ms"] >= t["propagate_ms"] > 0
    assert s.info.memory_bytes > s.propagator.bank.nbytes > 0


def test_steady_state_allocates_nothing_that_stays(runtime):
    """After the memory is full, tracking more frames retains no memory (caller buffers reused)."""
    s = runtime.session(W, H, memory=2)
    frames, truths = moving_squares(30)
    out = np.zeros((H, W), np.uint8)
    probs = np.zeros((3, H // 8, W // 8), np.float32)
    s.step(frames[0], out, mask=truths[0])
    for f in frames[1:6]:
        s.step(f, out, probs=probs)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for f in frames[6:]:
            s.step(f, out, probs=probs)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 24 * 1024, f"{grown} bytes retained over 24 frames"  # one label map is 6 KiB


def test_sample_two_streams(bundle, capsys):
    import two_streams

    results = two_streams.run(str(bundle), frames=6)
    assert [len(v) for v in results.values()] == [6, 6]
    _, a_truths = moving_squares(6)
    np.testing.assert_array_equal(results["a"][0], a_truths[0])  # the given mask comes back on frame 0
    assert jaccard(results["a"][-1] == 1, a_truths[-1] == 1) > 0.4
    assert "stream a" in capsys.readouterr().out


def test_sample_add_object_midway(bundle, capsys):
    import add_object_midway as sample

    results = sample.run(str(bundle), frames=sample.REMOVE_AT + 2)
    out, truth = results[sample.ADD_AT]
    np.testing.assert_array_equal(out[truth == 3], 3)
    assert jaccard(results[-1][0] == 3, results[-1][1] == 3) > 0.4
    assert 1 not in np.unique(results[-1][0])  # removed at REMOVE_AT
    assert "session memory" in capsys.readouterr().out
