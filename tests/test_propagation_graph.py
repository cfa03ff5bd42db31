"""The device step on ONNX Runtime's CPU provider: the propagation graph
(diffvos/runtime/propagation_graph.py) run with IO binding and the memory bank in "device" memory
(diffvos/runtime/device_step.py), the input graph and the feature map left on the device.

References: the numpy kernel (tests/test_propagation.py checks it against the dense formula and
the published outputs), the published outputs themselves (golden fixture), the host stages of a
session, and byte counts of what a frame moves. The graph executed here is the one a GPU runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import diffvos
from diffvos.bundle import Affinity
from diffvos.config import PropagationConfig
from diffvos.errors import InputError
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.attention import AttentionPropagator
from diffvos.runtime.device import DeviceTensor
from diffvos.runtime.device_step import GraphPropagator
from diffvos.runtime.features import Features
from diffvos.runtime.graph_engines import GraphEngines
from diffvos.runtime.postprocess import (
    LabelSpec,
    labels_to_onehot,
    minmax_normalise,
    nearest_indices,
    soft_to_labels,
    upsample_bilinear,
)
from diffvos.runtime.propagation import Propagator, parse_mag_filter
from diffvos.runtime.propagation_graph import (
    GraphSpec,
    key_blocks,
    labels_model,
    propagation_model,
)
from diffvos.runtime.propagators import propagator_for
from diffvos.runtime.threads import ThreadPlan, plan_threads
from diffvos.sample_clip import moving_squares


@pytest.fixture(scope="module")
def graphs():
    return GraphEngines("cpu", plan_threads(1))


def _graph(graphs, cfg, h, w, c, classes, labels=None, out_hw=None, heads=1, attention=False):
    spec = GraphSpec.for_config(cfg, h, w, c, heads=heads, attention=attention, labels=labels)
    return GraphPropagator(graphs, spec, classes, graphs.device_io(), out_hw, cfg.head_weights)


def _onehot(labels, classes):
    return (labels[None] == np.arange(classes)[:, None, None]).astype(np.float32)


def _near_tie(soft, scale, out_hw, eps=1e-5):
    up = minmax_normalise(upsample_bilinear(soft, (soft.shape[1] * scale, soft.shape[2] * scale)))
    top = np.sort(up, axis=0)
    gap = top[-1] - top[-2]
    return gap[nearest_indices(gap.shape[0], out_hw[0])[:, None], nearest_indices(gap.shape[1], out_hw[1])[None]] < eps


# --- the published outputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", ["neighborhood3_topk5", "dense_topk15"])
def test_fixture_matches_numpy_and_golden(graphs, propagation_fixture_dir, name, dtype):
    data = np.load(propagation_fixture_dir / "seed_propagation_golden.npz")
    meta = json.loads((propagation_fixture_dir / "seed_propagation_golden.json").read_text())
    m, feats = meta[name], data["features"]
    cfg = PropagationConfig(temperature=m["temperature"], topk=m["topk"], radius=m["size_mask_neighborhood"],
                            memory=m["n_last_frames"], feature_dtype=dtype, mag_filter="off")
    onehot = labels_to_onehot(data["first_labels"], feats.shape[2:], 3)
    out_hw, scale = tuple(meta["original_hw"]), meta["upsample_scale"]
    spec = LabelSpec(scale, (feats.shape[2] * scale, feats.shape[3] * scale))
    ref = Propagator(*feats.shape[1:], 3, cfg)
    graph = _graph(graphs, cfg, *feats.shape[2:], feats.shape[1], 3, spec, out_hw)
    ref.start(feats[0], onehot)
    graph.start(feats[0], onehot)
    lut = np.arange(256, dtype=np.uint8)
    for t, f in enumerate(feats[1:]):
        want = ref.step(f)
        soft, labels = np.empty_like(want), np.empty(out_hw, np.uint8)
        graph.step_to_labels(f, spec, lut, labels, soft)
        np.testing.assert_allclose(soft, want, atol=2e-6)
        golden = data[f"{name}__soft"][t]
        wrong = labels != data[f"{name}__labels"][t]
        if dtype == "float32":
            assert np.abs(soft - golden).max() < 1e-5
            assert not (wrong & ~_near_tie(golden, scale, out_hw)).any(), f"frame {t + 1}: {wrong.sum()} labels"
        else:  # float16 memory: the numpy kernel's own figures (tests/test_propagation.py)
            assert np.abs(soft - golden).max() < {"neighborhood3_topk5": 1e-3, "dense_topk15": 0.05}[name]
            assert wrong.mean() < 1e-3
        np.testing.assert_array_equal(labels, soft_to_labels(soft, scale, out_hw))


# --- random settings against the numpy kernel --------------------------------------------------------------
@pytest.mark.parametrize(
    "radius,topk,block,memory,classes,mag,dtype",
    [
        (1, 3, 2, 2, 2, "off", "float32"),
        (2, 5, 3, 3, 3, "1.5", "float16"),  # ring of 3 wraps twice
        (3, 7, 4, 28, 4, "2", "float32"),  # ring filling the whole video
        (4, 4, 5, 1, 6, "adaptive", "float16"),
        (2, 9, 2, 2, 2, "adaptive", "float32"),  # blocks grown to hold k cells
        (0, 6, None, 3, 3, "off", "float16"),  # no window: query bands
        (0, 6, None, 3, 3, "adaptive", "float32"),
        (2, 5, 3, 0, 3, "12", "float16"),  # no memory: the first frame alone
    ],
)
def test_random_settings_match_numpy(graphs, radius, topk, block, memory, classes, mag, dtype):
    rng = np.random.default_rng(radius * 100 + topk + classes)
    t, c, h, w = 8, 16, 9, 11
    frames = rng.standard_normal((t, c, h, w)).astype(np.float32)
    onehot = _onehot(rng.integers(0, classes, (h, w)), classes)
    cfg = PropagationConfig(temperature=0.1, topk=topk, radius=radius, memory=memory, feature_dtype=dtype,
                            mag_filter=mag, tile=block)
    ref, graph = Propagator(c, h, w, classes, cfg), _graph(graphs, cfg, h, w, c, classes)
    ref.start(frames[0], onehot)
    graph.start(frames[0], onehot)
    for f in frames[1:]:
        np.testing.assert_allclose(graph.step(f), ref.step(f), atol=2e-6)
        if mag == "adaptive":
            assert graph.last_threshold == pytest.approx(ref.last_threshold, rel=1e-6)
    assert len(graph.bank) == len(ref.bank)
    # the device bank is the numpy bank, slot by slot (the same ring rule; unfilled slots are
    # uninitialised device memory)
    used = ref.bank.context_slots()
    np.testing.assert_array_equal(used, graph.bank.context_slots())
    np.testing.assert_allclose(np.asarray(graph.bank.features)[used].astype(np.float32),
                               ref.bank.features[used].astype(np.float32), atol=1e-3 if dtype == "float16" else 1e-6)
    np.testing.assert_allclose(np.asarray(graph.bank.masks)[used], ref.bank.masks[used], atol=2e-6)


def test_a_full_ring_reads_the_slot_before_it_is_replaced(graphs):
    """Once the ring is full the frame's features replace a slot the same run reads; written in
    place before the read (ONNX Runtime computes that output early) the results go wrong (0.65
    measured). Ring of 2 over 10 frames, float32: equal to numpy at every step."""
    rng = np.random.default_rng(11)
    frames = rng.standard_normal((10, 8, 6, 7)).astype(np.float32)
    onehot = _onehot(rng.integers(0, 2, (6, 7)), 2)
    cfg = PropagationConfig(topk=4, radius=2, memory=2, feature_dtype="float32", mag_filter="off", tile=3)
    ref, graph = Propagator(8, 6, 7, 2, cfg), _graph(graphs, cfg, 6, 7, 8, 2)
    ref.start(frames[0], onehot)
    graph.start(frames[0], onehot)
    for f in frames[1:]:
        np.testing.assert_allclose(graph.step(f), ref.step(f), atol=2e-6)


def test_memory_filled_with_copies_of_the_first_frame(graphs):
    """``bank.repeat_first`` (the pipeline benchmark's prefill) copies on the device exactly what
    the host bank holds, slot by slot; the filled memory propagates the first mask onto the first
    frame. (The kernels are not compared step by step here: copies tie exactly at the k-th value,
    where numpy keeps every tie and the graph exactly k, the documented deviation.)"""
    rng = np.random.default_rng(5)
    frames = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    first = rng.integers(0, 3, (6, 7))
    cfg = PropagationConfig(topk=4, radius=2, memory=3, feature_dtype="float16", mag_filter="off", tile=3)
    ref, graph = Propagator(8, 6, 7, 3, cfg), _graph(graphs, cfg, 6, 7, 8, 3)
    for p in (ref, graph):
        p.start(frames[0], _onehot(first, 3))
        p.step(frames[1])  # before the copies: no ties
        p.bank.repeat_first(4)  # wraps the ring of 3
    assert len(ref.bank) == len(graph.bank) == 4
    assert ref.bank.ring.target == graph.bank.ring.target == 3
    np.testing.assert_array_equal(graph.bank.features.numpy(), ref.bank.features)
    np.testing.assert_allclose(graph.bank.masks.numpy(), ref.bank.masks, atol=2e-6)
    np.testing.assert_array_equal(graph.predict(frames[0]).argmax(axis=0), first)


def test_objects_added_and_removed_mid_video(graphs):
    """As Session does: predict, add channels, remember the combined mask; later drop an object."""
    rng = np.random.default_rng(5)
    c, h, w = 12, 8, 10
    frames = rng.standard_normal((9, c, h, w)).astype(np.float32)
    onehot = _onehot(rng.integers(0, 2, (h, w)), 2)
    cfg = PropagationConfig(topk=5, radius=2, memory=3, mag_filter="adaptive")
    ref, graph = Propagator(c, h, w, 2, cfg), _graph(graphs, cfg, h, w, c, 2)
    for p in (ref, graph):
        p.start(frames[0], onehot)
    for f in frames[1:3]:
        np.testing.assert_allclose(graph.step(f), ref.step(f), atol=2e-6)
    want, got = ref.predict(frames[3]), graph.predict(frames[3])
    np.testing.assert_allclose(got, want, atol=2e-6)
    combined = np.concatenate([want, np.zeros((2, h, w), np.float32)])
    combined[:, 2:5, 3:7] = 0.0
    combined[2, 2:5, 3:7] = 1.0  # two new objects, one annotated
    for p in (ref, graph):
        p.add_objects(2)
        p.remember(combined)
    assert graph.num_classes == 4
    for f in frames[4:6]:
        np.testing.assert_allclose(graph.step(f), ref.step(f), atol=2e-6)
    for p in (ref, graph):
        p.remove_object(1)
    for f in frames[6:]:
        np.testing.assert_allclose(graph.step(f), ref.step(f), atol=2e-6)
    np.testing.assert_allclose(np.asarray(graph.bank.masks), ref.bank.masks, atol=2e-6)
    with pytest.raises(InputError, match="object 5"):
        graph.remove_object(5)
    with pytest.raises(InputError, match="without a predict"):
        graph.remember(combined[:3])


@pytest.mark.parametrize("weighting,mag,radius", [("uniform", "off", 2), ("adaptive", "adaptive", 2),
                                                  ("uniform", "12", 0)])
def test_attention_heads_match_numpy(graphs, weighting, mag, radius):
    """Raw per-head queries/keys, temperature sqrt(d), per-head top-k and MAG-Filter, weighted sum."""
    rng = np.random.default_rng(3)
    heads, d, h, w, classes = 3, 4, 7, 8, 3
    frames = rng.normal(size=(6, 2 * heads * d, h, w)).astype(np.float32) * 2
    onehot = _onehot(rng.integers(0, classes, (h, w)), classes)
    cfg = PropagationConfig(topk=5, radius=radius, memory=2, mag_filter=mag, head_weights=weighting)
    ref = AttentionPropagator(heads, d, h, w, classes, cfg)
    graph = _graph(graphs, cfg, h, w, d, classes, heads=heads, attention=True)
    ref.start(frames[0], onehot)
    graph.start(frames[0], onehot)
    np.testing.assert_allclose(graph.weights, ref.weights, rtol=1e-6)
    if weighting == "adaptive":
        np.testing.assert_allclose(graph.head_scores, ref.head_scores)
    for f in frames[1:]:
        np.testing.assert_allclose(graph.step(f), ref.step(f), atol=3e-6)
        if mag == "adaptive":
            np.testing.assert_allclose(graph.last_threshold, [p.last_threshold for p in ref.per_head], rtol=1e-6)
    keys = np.asarray(graph.bank.features).reshape(3, h, w, heads, d)  # remembered by the keys of every head
    for head, p in enumerate(ref.per_head):
        np.testing.assert_allclose(keys[..., head, :].astype(np.float32), p.bank.features.astype(np.float32),
                                   rtol=1e-3)


def test_label_stage_matches_soft_to_labels(graphs):
    """Bilinear, min-max, argmax, object ids, nearest resize (float near-ties only may differ)."""
    rng = np.random.default_rng(2)
    lut = np.zeros(256, np.uint8)
    lut[:4] = [0, 7, 3, 200]
    for (h, w), stride, out_hw in [((6, 10), 8, (53, 83)), ((12, 20), 8, (100, 170)), ((8, 13), 16, (128, 208))]:
        soft = rng.random((4, h, w)).astype(np.float32)
        soft[2] = 0  # an empty channel stays as is
        spec = GraphSpec(h, w, 4, topk=1, labels=LabelSpec(stride, (h * stride, w * stride)))
        engine = graphs.get("labels", spec, lambda: labels_model(spec))
        got = engine.infer({"soft": soft, "rows": nearest_indices(h * stride, out_hw[0]).astype(np.int64),
                            "cols": nearest_indices(w * stride, out_hw[1]).astype(np.int64),
                            "lut": lut.astype(np.int32)})["labels"]
        want = soft_to_labels(soft, stride, out_hw, lut=lut)
        assert got.dtype == np.uint8 and got.shape == out_hw
        assert (got != want).mean() < 1e-4


def test_graph_ops_suit_every_provider():
    """Only ops of the TensorRT ONNX parser's support list, TopK's K an initializer, int32 index
    arithmetic, opset 17 / IR 8 (what ONNX Runtime 1.18+ and TensorRT 10 read)."""
    import onnx

    spec = GraphSpec(20, 30, 4, heads=2, attention=True, capacity=4, radius=5, topk=15,
                     mag=parse_mag_filter("adaptive"), block=4, labels=LabelSpec(8, (160, 240)))
    model = propagation_model(spec)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    ops = {n.op_type for n in model.graph.node}
    allowed = {"Reshape", "Transpose", "ReduceSumSquare", "Sqrt", "Max", "Div", "Cast", "Slice", "Gemm", "MatMul",
               "Add", "TopK", "Concat", "Gather", "GatherElements", "Sub", "Mul", "LessOrEqual", "Greater",
               "ReduceMax", "ReduceMin", "Exp", "ReduceSum", "Shape", "Unsqueeze", "Identity", "Where", "ArgMax"}
    assert ops <= allowed, ops - allowed
    inits = {i.name for i in model.graph.initializer}
    assert all(n.input[1] in inits for n in model.graph.node if n.op_type == "TopK")
    assert sum(b.nb for b in key_blocks(GraphSpec(60, 104, 8))) == 60 * 104  # blocks partition the memory
    with pytest.raises(InputError, match="fewer than topk"):
        GraphSpec(3, 4, 8, topk=15)


# --- the session: kernel choice, bytes moved, input graph, feature map on the device ----------------------
@pytest.fixture(scope="module")
def noisy_bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "b", ensemble=2, alpha_bar=0.8)


def test_only_the_frame_goes_up_and_the_labels_come_down(noisy_bundle):
    runtime = diffvos.Runtime(noisy_bundle, backend="cpu")
    frames, truths = moving_squares(7)
    h, w = frames[0].shape[:2]
    session = runtime.session(w, h)
    assert isinstance(session.features.device, type(session.device)) and session.device is not None
    session.step(frames[0], mask=truths[0])
    session.step(frames[1])
    assert isinstance(session.propagator, GraphPropagator)
    session.device.reset_counts()
    for f in frames[2:5]:
        session.step(f)
    assert (session.device.up, session.device.down) == (3 * h * w * 3, 3 * h * w)  # uint8 frame, uint8 labels
    session.device.reset_counts()
    probs = np.empty(session.info.prob_shape, np.float32)
    session.step(frames[5], probs=probs)  # asked for: the soft mask comes down too
    assert (session.device.up, session.device.down) == (h * w * 3, h * w + probs.nbytes)
    # a frame of another size: resized on the host (uint8), the model-size frame goes up
    big = diffvos.Runtime(noisy_bundle, backend="cpu").session(2 * w, 2 * h)
    big.step(np.repeat(np.repeat(frames[0], 2, 0), 2, 1), mask=np.repeat(np.repeat(truths[0], 2, 0), 2, 1))
    big.step(np.repeat(np.repeat(frames[1], 2, 0), 2, 1))  # the second frame also uploads the object ids
    big.device.reset_counts()
    big.step(np.repeat(np.repeat(frames[2], 2, 0), 2, 1))
    assert (big.device.up, big.device.down) == (h * w * 3, 4 * h * w)


def test_device_input_and_features_equal_the_host_path(noisy_bundle):
    """The input graph makes the host's x_t (same noise draws, colour order) and the feature map left
    on the device is the host one."""
    runtime = diffvos.Runtime(noisy_bundle, backend="cpu")
    graphs = runtime.graphs
    frames, _ = moving_squares(2)
    for color in ("BGR", "RGB"):
        host = Features(runtime.manifest, runtime.engines, seed=3)
        device = Features(runtime.manifest, runtime.engines, seed=3, device=graphs.device_io(), graphs=graphs)
        (x_host,) = host.prepare(frames[1], color).values()
        (x_dev,) = device.prepare(frames[1], color).values()
        assert isinstance(x_dev, DeviceTensor)
        np.testing.assert_allclose(np.asarray(x_dev), x_host, rtol=1e-6, atol=1e-6)
        f_dev = device.run(x_dev)
        assert isinstance(f_dev, DeviceTensor)
        np.testing.assert_allclose(np.asarray(f_dev[0]), host.run(x_host)[0], rtol=1e-5, atol=1e-6)
    seen = []
    engine = runtime.engines["features"]
    with engine.observe(lambda feed, out: seen.append((feed, out))):
        out = engine.infer_on_device({"x_t": device.device.whole(x_dev)})
    assert len(seen) == 1 and isinstance(seen[0][1]["features"], np.ndarray)  # observers get host copies
    np.testing.assert_array_equal(seen[0][1]["features"], out["features"].numpy())


def test_session_kernel_choice_and_tracking(noisy_bundle):
    runtime = diffvos.Runtime(noisy_bundle, backend="cpu")
    frames, truths = moving_squares(6)
    h, w = frames[0].shape[:2]
    results = {}
    for kernel in ("graph", "numpy"):
        s = runtime.session(w, h, propagation_kernel=kernel)
        labels = [s.step(frames[0], mask=truths[0])] + [s.step(f) for f in frames[1:]]
        assert type(s.propagator) is (GraphPropagator if kernel == "graph" else Propagator)
        assert s.memory_bytes() > s.propagator.bank.nbytes > 0
        results[kernel] = np.stack(labels)
    # the toy's feature map repeats exactly between frames: exact ties at the k-th value, where the
    # graph keeps k and numpy every tie (documented); still, nearly every pixel agrees
    assert (results["graph"] != results["numpy"]).mean() < 0.01
    tiny = runtime.session(w, h, topk=200)  # a 8x12 grid has fewer cells than k: numpy kernel
    tiny.step(frames[0], mask=truths[0])
    assert isinstance(tiny.propagator, Propagator)


def test_a_closed_runtime_lets_go_of_its_graphs(noisy_bundle):
    """Runtime.close releases the graphs the runtime built as it releases the bundle's engines: once
    its sessions are closed and gone, nothing keeps them (the closed Runtime object may live on)."""
    import gc
    import weakref

    runtime = diffvos.Runtime(noisy_bundle, backend="cpu")
    frames, truths = moving_squares(3)
    session = runtime.session(frames[0].shape[1], frames[0].shape[0])
    session.step(frames[0], mask=truths[0])
    session.step(frames[1])
    graphs = weakref.ref(session.graphs)
    session.close()
    del session
    runtime.close()
    gc.collect()
    assert graphs() is None


def test_graph_engines_use_the_runtime_thread_plan():
    built = []

    def loader(model, backend, plan):
        built.append((backend, plan))
        from diffvos.runtime.ort_engine import OrtLoader

        return OrtLoader(None, backend="cpu", plan=plan, model=model)()

    plan = ThreadPlan(intra_op=2, blas_threads=1, spinning=False)
    graphs = GraphEngines("cpu", plan, loader=loader)
    cfg = PropagationConfig(topk=3, radius=1, memory=1)
    graph = propagator_for(Affinity(kind="features"), 4, 3, 5, 2, cfg, graphs=graphs)
    assert isinstance(graph, GraphPropagator)
    assert ("cpu", plan) in built  # the propagation graph: the runtime's threads, no spinning
    assert ("cpu", dataclasses.replace(plan, intra_op=1)) in built  # copies and the first-frame graph: one
    assert graphs.built == {"copy": 1, "propagation": 1, "remember": 1}
    propagator_for(Affinity(kind="features"), 4, 3, 5, 2, cfg, graphs=graphs)
    assert graphs.built["propagation"] == 1  # shared by every session with the same settings
    assert isinstance(propagator_for(Affinity(kind="features"), 4, 3, 5, 2, cfg), Propagator)  # no graphs


def test_a_graph_being_built_does_not_hold_up_built_engines():
    """One session building its propagation graph must not stall the copies (looked up per frame)
    of streams already running: a built engine comes back while another build is under way."""
    import threading

    from diffvos.runtime.ort_engine import OrtLoader

    building, release = threading.Event(), threading.Event()

    def loader(model, backend, plan):
        if b"diffvos_propagation" in model:
            building.set()
            assert release.wait(10), "the test never released the build"
        return OrtLoader(None, backend="cpu", plan=plan, model=model)()

    graphs = GraphEngines("cpu", ThreadPlan(intra_op=1, blas_threads=1, spinning=False), loader=loader)
    copier = graphs.copier(np.float32)
    spec = GraphSpec(3, 5, 4, capacity=1, radius=1, topk=3)
    builder = threading.Thread(target=graphs.propagation, args=(spec,))
    builder.start()
    try:
        assert building.wait(10)
        got: list = []
        lookup = threading.Thread(target=lambda: got.append(graphs.copier(np.float32)))
        lookup.start()
        lookup.join(5)
        assert got == [copier]  # returned while the build still holds the cache's lock
    finally:
        release.set()
        builder.join(10)
    assert graphs.built == {"copy": 1, "propagation": 1}
