"""INT8 that keeps the masks (issue 14): Q/DQ placement and TensorRT rules, graph edits, the
mixed-precision search, the mask gate, and the runtime's refusal of a failed bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from diffvos.bundle import MaskCheck, read_manifest, write_manifest
from diffvos.calibration.calibrate import calibrate_bundle
from diffvos.calibration.mask_gate import (
    Clip,
    NoisyInput,
    Reference,
    failures,
    grey_level_sigma,
    grid_mask,
    verdict,
)
from diffvos.calibration.options import CalibrationOptions, GateLimits
from diffvos.calibration.qdq_check import check_tensorrt
from diffvos.calibration.qdq_graph import (
    derive,
    graph_sha256,
    keep_float,
    load,
    name_nodes,
    prune,
    quantised_nodes,
)
from diffvos.calibration.quantize import (
    Candidate,
    QuantConfig,
    calibrate_ranges,
    candidate_configs,
    distinct,
    quantize_graph,
)
from diffvos.calibration.search import keep_count_search
from diffvos.config import SessionConfig
from diffvos.errors import BundleError
from diffvos.runtime.ort_engine import OrtLoader
from diffvos.runtime.session import Runtime
from tests.int8_models import SENSITIVE_NODE, make_sensitive_bundle, write_clip

QUIET = {"log": lambda s: None}


# --- the search's arithmetic ------------------------------------------------------------------------


def test_keep_count_search_probes_then_bisects():
    # passes from k = 5 on, 10 nodes: 0, 1, 2, 4 fail, 8 passes, bisection 6 (pass), 5 (pass)
    k, tried = keep_count_search(10, lambda k: k >= 5)
    assert (k, tried) == (5, [0, 1, 2, 4, 8, 6, 5])
    assert keep_count_search(10, lambda k: True) == (0, [0])
    assert keep_count_search(3, lambda k: False) == (None, [0, 1, 2, 3])  # the probe is capped at n
    assert keep_count_search(6, lambda k: k >= 6) == (6, [0, 1, 2, 4, 6, 5])
    assert keep_count_search(0, lambda k: False) == (None, [0])


# --- quantised graphs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """The sensitive net (with a MatMul), its named float graph, ranges and both candidates."""
    work = tmp_path_factory.mktemp("q")
    bundle = make_sensitive_bundle(work / "b", matmul=True)
    src = work / "float.onnx"
    import onnx

    onnx.save(name_nodes(load(bundle / "features.onnx")), str(src))
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, (1, 3, 128, 192)).astype(np.float32) for _ in range(4)]
    ranges = work / "ranges.json"
    calibrate_ranges(src, "x_t", iter(xs), method="minmax", workdir=work, cache_path=ranges)
    paths = {}
    for cfg in candidate_configs("tensorrt") + [QuantConfig("cpu", ("Conv", "MatMul"), target="cpu")]:
        paths[cfg.name] = quantize_graph(src, work / f"{cfg.name}.onnx", ranges, cfg)
    return {"work": work, "src": src, "ranges": ranges, "paths": paths, "x": xs[0]}


def _run(path_or_model, x, tmp: Path | None = None) -> np.ndarray:
    import onnx

    path = path_or_model
    if not isinstance(path_or_model, (str, Path)):
        path = tmp / "run.onnx"
        onnx.save(path_or_model, str(path))
    engine = OrtLoader(Path(path), backend="cpu")()
    try:
        return next(iter(engine.infer({"x_t": x}).values()))
    finally:
        engine.close()


def test_candidates_produce_different_graphs(quantised, tmp_path):
    """Defect: 'conv+matmul' inherited keep_first_last=True and equalled 'conv-keep-ends' byte for
    byte. Every candidate now says what it keeps; identical graphs are found by hash."""
    conv_matmul, conv = (load(quantised["paths"][n]) for n in ("conv+matmul", "conv"))
    assert quantised_nodes(conv_matmul) == {"embed", "amp", SENSITIVE_NODE, "widen"}  # the first conv too
    assert quantised_nodes(conv) == {"embed", "amp", SENSITIVE_NODE}
    assert graph_sha256(conv_matmul) != graph_sha256(conv)
    assert all(not c.keep_first_last for c in candidate_configs())
    # without a MatMul both op-type sets give one graph: the repeat is dropped and says so
    import onnx

    plain = make_sensitive_bundle(tmp_path / "plain")
    src = tmp_path / "plain.onnx"
    onnx.save(name_nodes(load(plain / "features.onnx")), str(src))
    ranges = tmp_path / "r.json"
    calibrate_ranges(src, "x_t", iter([quantised["x"]]), method="minmax", workdir=tmp_path, cache_path=ranges)
    cands = []
    for cfg in candidate_configs():
        path = quantize_graph(src, tmp_path / f"{cfg.name}.onnx", ranges, cfg)
        cands.append(Candidate(cfg, path, graph_sha256(load(path))))
    kept = distinct(cands)
    assert [c.config.name for c in kept] == ["conv+matmul"] and cands[1].same_as == "conv+matmul"


def test_tensorrt_placement_quantises_inputs_only(quantised):
    """Q/DQ on the inputs of the quantised ops only; ONNX Runtime's default (the cpu target) also
    quantises every output."""
    trt, cpu = (load(quantised["paths"][n]) for n in ("conv+matmul", "cpu"))
    outputs_quantised = {n.input[0] for n in trt.graph.node if n.op_type == "QuantizeLinear"} & {"a", "loud", "mixed"}
    # 'a' and 'loud' are read by quantised convs, so they are quantised as inputs; 'mixed' is read by the
    # MatMul: an input too. The graph output side of 'widen' is never quantised.
    assert "widened" not in {n.input[0] for n in trt.graph.node if n.op_type == "QuantizeLinear"}
    assert outputs_quantised == {"a", "loud", "mixed"}
    assert "widened" in {n.input[0] for n in cpu.graph.node if n.op_type == "QuantizeLinear"}


def test_tensorrt_rules_pass_for_the_default_target_and_name_each_violation(quantised):
    report = check_tensorrt(load(quantised["paths"]["conv+matmul"]))
    assert report.ok and report.quantize >= 4, report.violations
    cpu = check_tensorrt(load(quantised["paths"]["cpu"]))
    text = "\n".join(cpu.violations)
    assert "zero point is uint8" in text and "dequantises a int32 constant" in text
    # hand-made breaches of the rules, one each, on the default graph
    import onnx
    from onnx import helper, numpy_helper

    def broken(edit) -> list[str]:
        m = onnx.ModelProto()
        m.CopyFrom(load(quantised["paths"]["conv+matmul"]))
        edit(m.graph)
        return check_tensorrt(m).violations

    def init(g, name):
        return next(i for i in g.initializer if i.name == name)

    def nonzero_zero_point(g):
        q = next(n for n in g.node if n.op_type == "QuantizeLinear")
        init(g, q.input[2]).CopyFrom(numpy_helper.from_array(np.array(3, np.int8), q.input[2]))

    assert any("zero point 3 != 0" in v for v in broken(nonzero_zero_point))

    def per_channel_activation(g):
        q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "a")
        init(g, q.input[1]).CopyFrom(numpy_helper.from_array(np.full(8, 0.1, np.float32), q.input[1]))

    assert any("per-channel scales on an activation" in v for v in broken(per_channel_activation))

    def weight_axis_1(g):
        dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_mix_quantized")
        next(a for a in dq.attribute if a.name == "axis").i = 1

    assert any("per-channel axis 1, Conv needs the output-channel axis 0" in v for v in broken(weight_axis_1))

    def dead_pair(g):
        g.node.append(helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero_point"], ["dangling"], name="dead"))

    assert any("dead QuantizeLinear" in v for v in broken(dead_pair))

    def q_into_relu(g):
        q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "a")
        g.node.append(helper.make_node("Relu", [q.output[0]], ["r"], name="relu_on_int8"))

    assert any("read by Relu" in v for v in broken(q_into_relu))


def test_keep_float_edit_equals_requantising_and_all_float_is_fp32(quantised, tmp_path):
    base = load(quantised["paths"]["conv+matmul"])
    float_model = load(quantised["src"])
    x = quantised["x"]
    edited = derive(base, float_model, [SENSITIVE_NODE])
    excluded = quantize_graph(quantised["src"], tmp_path / "ex.onnx", quantised["ranges"],
                              QuantConfig("ex", ("Conv", "MatMul"), exclude=(SENSITIVE_NODE,)))
    assert quantised_nodes(edited) == quantised_nodes(load(excluded)) == {"embed", "amp", "widen"}
    np.testing.assert_array_equal(_run(edited, x, tmp_path), _run(excluded, x))
    everything = derive(base, float_model, ["embed", "amp", SENSITIVE_NODE, "widen"])
    assert not [n for n in everything.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    np.testing.assert_array_equal(_run(everything, x, tmp_path), _run(quantised["src"], x))
    # the edit alone leaves the bypassed pair dead: TensorRT must not see it, prune removes it
    raw = keep_float(base, float_model, [SENSITIVE_NODE])
    assert any("dead" in v for v in check_tensorrt(raw).violations)
    pruned, removed = prune(raw)
    assert removed >= 2 and check_tensorrt(pruned).ok
    with pytest.raises(ValueError, match="no node named nope"):
        keep_float(base, float_model, ["nope"])


# --- the mask gate ---------------------------------------------------------------------------------


def test_gate_verdict_and_failure_message_by_hand():
    first = np.zeros((4, 4), np.uint8)
    first[:2, :2] = 1
    clip = Clip("v", "v", first, [1], 3, role="heldout")
    ref_labels = [first, first, first]
    ref = Reference(clip, ref_labels, floor=np.array([1.0, 1.0]), jf=80.0)
    ious = np.array([1.0, 0.5])  # frame 2: half the object
    check = verdict(ref, ious, 79.0, GateLimits())
    assert check.mean_iou == 0.75 and check.min_iou == 0.5 and check.iou_limit == 0.98 and not check.passed
    assert check.jf_delta == -1.0
    (iou_line, jf_line) = failures([check], GateLimits())
    assert iou_line == "v: mask IoU vs FP32 0.7500 < 0.9800, short by 0.2300"
    assert jf_line == "v: J&F 79.00 vs FP32 80.00 = -1.00 points, below -0.5 by 0.50"
    # a calibration clip's limit is floored at FP32's own agreement under input noise
    calib = Reference(Clip("c", "c", first, [1], 3, role="calibration"), ref_labels, np.array([0.9, 0.96]), None)
    c2 = verdict(calib, np.array([0.95, 0.95]), None, GateLimits())
    assert c2.iou_limit == pytest.approx(0.93) and c2.passed and c2.noise_floor_iou == pytest.approx(0.93)
    held = verdict(Reference(clip, ref_labels, np.array([0.9, 0.96]), None), np.array([0.95, 0.95]), None, GateLimits())
    assert held.iou_limit == 0.98 and not held.passed  # a held-out video keeps --min-iou


def test_grid_mask_and_noise_floor_engine():
    g = grid_mask(4, 6)
    assert g.tolist() == [[1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6], [4, 4, 5, 5, 6, 6]]

    class Echo:
        inputs, outputs, provider, providers, note = (), (), "CPUExecutionProvider", [], None

        def infer(self, feed):
            return dict(feed)

        def close(self):
            pass

    x = np.zeros((1, 3, 64, 64), np.float32)
    noisy = NoisyInput(Echo(), sigma=0.02)
    out = noisy.infer({"x_t": x})["x_t"]
    assert out.std() == pytest.approx(0.02, rel=0.02) and abs(out.mean()) < 1e-3
    assert not np.array_equal(noisy.infer({"x_t": x})["x_t"], out)  # fresh draws per call ...
    noisy.restart()
    np.testing.assert_array_equal(noisy.infer({"x_t": x})["x_t"], out)  # ... the same again per clip
    bundle_like = read_manifest(make_sensitive_bundle(Path(__import__("tempfile").mkdtemp()) / "b"))
    assert grey_level_sigma(bundle_like) == ("features", pytest.approx(2 / 255))


def test_calibrate_cli_gates_with_the_users_tracking_defaults():
    """Defect: the old mask check built its tracker without MAG-Filter 12, the CLI's default."""
    from diffvos.calibration import cli
    from diffvos.config import session_config_from_args

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", "--bundle", "b", "--frames", "f", "--output", "o"])
    assert session_config_from_args(args) == SessionConfig() and SessionConfig().propagation.mag_filter == "12"
    d = CalibrationOptions()
    assert (args.min_iou, args.max_jf_drop, args.search) == (d.limits.min_iou, d.limits.max_jf_drop, True)
    assert (d.limits.min_iou, d.limits.max_jf_drop) == (0.98, 0.5)


# --- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    bundle = make_sensitive_bundle(root / "fp32")
    calib, _, calib_ann = write_clip(root / "calib", 8)
    held, _, held_ann = write_clip(root / "held", 8, tint=60)
    return {"root": root, "bundle": bundle, "calib": calib, "calib_ann": calib_ann, "held": held, "held_ann": held_ann}


def _options(scene, **kw) -> CalibrationOptions:
    base = dict(num_frames=4, heldout=3, proxy_frames=8, speed_runs=1, masks=[str(scene["calib_ann"])],
                heldout_videos=[(str(scene["held"]), str(scene["held_ann"]))])
    base.update(kw)
    return CalibrationOptions(**base)


def test_search_finds_the_one_sensitive_node_and_the_bundle_tracks(scene):
    out = scene["root"] / "int8"
    report = calibrate_bundle(scene["bundle"], [scene["calib"]], out, _options(scene), **QUIET)
    assert report.passed and report.failures == []
    assert report.search is not None and report.search.order[0] == SENSITIVE_NODE
    assert [s.k for s in report.search.steps] == [0, 1] and report.search.kept == 1
    assert [s.passed for s in report.search.steps] == [False, True]
    assert report.kept_float == [SENSITIVE_NODE]
    # FLOPs per cell: embed 3x8, amp 8x12, mix 12x16 multiply-adds: (24 + 96) / 312 stay INT8
    assert report.int8_flop_fraction == pytest.approx(120 / 312)
    assert report.sensitivity[0]["node"] == SENSITIVE_NODE and report.sensitivity[0]["gain"] > 0.5
    (held,) = report.videos
    assert held.passed and held.role == "heldout" and held.mean_iou >= 0.98 and held.jf_delta is not None
    assert report.tensorrt_violations == [] and report.cpu_speed is not None
    m = read_manifest(out)
    assert m.precision == "int8" and m.calibration.kept_float == [SENSITIVE_NODE]
    assert m.calibration.search.kept == 1 and m.calibration.videos[0].mean_iou == held.mean_iou
    assert quantised_nodes(load(out / "features.onnx")) == {"embed", "amp"}
    assert check_tensorrt(load(out / "features.onnx")).ok
    runtime = Runtime(out, backend="cpu")  # a passing bundle loads without any override
    session = runtime.session(192, 128)
    first = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(scene["calib_ann"] / "00000.png"))
    import cv2

    labels = session.step(cv2.imread(str(scene["calib"] / "00000.png")), mask=first)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_a_failing_gate_writes_nothing(scene):
    out = scene["root"] / "refused"
    report = calibrate_bundle(scene["bundle"], [scene["calib"]], out, _options(scene, search=False), **QUIET)
    assert not report.passed and not out.exists() and not list(out.parent.glob(".refused*"))
    assert report.kept_float == []
    text = " ".join(report.failures)
    assert "mask IoU vs FP32" in text and "short by" in text and "J&F" in text


def test_runtime_refuses_a_failed_bundle_unless_overridden(scene, capsys):
    out = scene["root"] / "failed"
    report = calibrate_bundle(scene["bundle"], [scene["calib"]], out, _options(scene, search=False, allow_failed=True),
                              **QUIET)
    assert not report.passed and read_manifest(out).calibration.passed is False
    with pytest.raises(BundleError) as info:
        Runtime(out, backend="cpu")
    text = str(info.value)
    assert "failed its calibration gate" in text and "mask IoU vs FP32" in text and "short by" in text
    assert "--allow-failed-calibration" in text
    assert Runtime(out, backend="cpu", allow_failed_calibration=True).manifest.calibration.passed is False
    # the command line: refused, then accepted with the flag
    from diffvos.cli import main

    video, mask = scene["held"], scene["held_ann"] / "00000.png"
    argv = ["track", "--bundle", str(out), "-i", str(video), "-m", str(mask), "-o", str(scene["root"] / "masks"),
            "--backend", "cpu", "--no-progress"]
    assert main(argv) != 0
    assert "failed its calibration gate" in capsys.readouterr().err
    assert main(argv + ["--allow-failed-calibration"]) == 0
    assert len(list((scene["root"] / "masks").glob("*.png"))) == 8


def test_bundles_calibrated_before_the_gate_are_refused_by_their_recorded_limits(tmp_path):
    """Schema-2 bundles written before issue 14 kept "passed": false and ran without a word."""
    bundle = make_sensitive_bundle(tmp_path / "old")
    data = json.loads((bundle / "diffvos.json").read_text())
    data["calibration"] = {
        "method": "entropy", "calibration_frames": 64, "heldout_frames": 8, "sources": ["a"], "seed": 0,
        "fresh_noise": False, "chosen": {"name": "conv-keep-ends"}, "candidates": [],
        "accuracy": {"frames": 8, "min_cosine": 0.855}, "limits": {"min_cosine": 0.99, "min_iou": 0.9},
        "passed": False, "masks": {"skipped": "no --heldout-video/--heldout-mask given"},
    }
    (bundle / "diffvos.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"held-out feature cosine 0\.8550 < 0\.99 \(by 0\.1350\)"):
        Runtime(bundle, backend="cpu")
    data["calibration"]["passed"] = True
    (bundle / "diffvos.json").write_text(json.dumps(data))
    m = Runtime(bundle, backend="cpu").manifest
    assert m.calibration.failed_limits() == [] and m.calibration.videos == []
    write_manifest(bundle, m)  # and it writes back with the new (empty) fields
    assert read_manifest(bundle).calibration.search is None


def test_mask_check_is_typed_in_the_manifest(tmp_path):
    bundle = make_sensitive_bundle(tmp_path / "b")
    data = json.loads((bundle / "diffvos.json").read_text())
    check = {"video": "v", "frames": 3, "objects": 1, "mean_iou": "high", "min_iou": 0.9, "iou_limit": 0.98,
             "passed": True}
    data["calibration"] = {"method": "entropy", "calibration_frames": 1, "heldout_frames": 1, "sources": [],
                           "seed": 0, "fresh_noise": False, "chosen": {}, "candidates": [], "accuracy": {},
                           "limits": {}, "passed": True, "videos": [check]}
    (bundle / "diffvos.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"calibration\.videos\[0\]\.mean_iou must be a number"):
        read_manifest(bundle)
    assert MaskCheck  # the section's type is public


def test_build_engine_refuses_a_graph_tensorrt_would_reject(scene):
    """A --target cpu bundle (uint8 activations, int32 biases) is stopped before any GPU work,
    with the rule it breaks."""
    from diffvos.calibration.engine_build import build_bundle_engines
    from diffvos.errors import ExportError

    out = scene["root"] / "cpu-target"
    report = calibrate_bundle(scene["bundle"], [scene["calib"]], out,
                              _options(scene, target="cpu", search=False, allow_failed=True), **QUIET)
    assert any("zero point is uint8" in v for v in report.tensorrt_violations)
    assert not any("TensorRT" in f for f in report.failures)  # the cpu target is not gated on TensorRT's rules
    with pytest.raises(ExportError, match=r"breaks TensorRT's Q/DQ rules \(\d+ violations, e.g. .*zero point is"):
        build_bundle_engines(out, trt=object(), cuda=object(), log=lambda s: None)
