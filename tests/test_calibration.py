"""INT8 calibration: frame sampling, runtime-exact calibration inputs, Q/DQ bundles, TRT cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from diffvos.bundle import read_manifest
from diffvos.calibration.calibrate import calibrate_bundle, calibration_inputs
from diffvos.calibration.frames import FramePool, split_indices
from diffvos.calibration.mask_gate import open_clip
from diffvos.calibration.options import CalibrationOptions
from diffvos.calibration.quantize import QuantConfig
from diffvos.calibration.trt_cache import (
    format_cache,
    parse_cache,
    scale_hex,
    trt_version_number,
)
from diffvos.errors import InputError
from diffvos.export.toy import make_toy_bundle
from diffvos.io.masks import DAVIS_PALETTE
from diffvos.runtime.features import Features
from diffvos.runtime.session import Runtime


def _frames(folder: Path, n: int = 12, hw=(64, 96)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        img = np.zeros((*hw, 3), np.uint8)
        img[:] = rng.integers(0, 255, 3)
        y, x = rng.integers(0, hw[0] // 2), rng.integers(0, hw[1] // 2)
        img[y:y + hw[0] // 2, x:x + hw[1] // 2] = rng.integers(0, 255, 3)
        cv2.imwrite(str(folder / f"{i:05d}.png"), img)
    return folder


def test_split_indices_even_and_disjoint():
    calib, held = split_indices(100, 5, 3)
    assert calib == [0, 25, 50, 74, 99]  # linspace(0, 99, 5) rounded
    assert len(held) == 3 and not set(held) & set(calib)
    assert all(0 <= h < 100 for h in held)
    calib, held = split_indices(3, 64, 2)  # fewer frames than asked: all calibrate, none held out
    assert calib == [0, 1, 2] and held == []


def test_frame_pool_spans_sources(tmp_path):
    a, b = _frames(tmp_path / "a", 3), _frames(tmp_path / "b", 4)
    pool = FramePool([a, b])
    assert len(pool) == 7
    (frame,) = pool.frames([4])
    np.testing.assert_array_equal(frame, cv2.imread(str(b / "00001.png")))


def test_calibration_reads_frames_and_masks_as_tracking_does(tmp_path):
    """Defect: calibration read frames in text order (1, 10, 2), ignored the EXIF guard and had
    its own suffixes, and its mask reader counted the DAVIS void value 255 as an object."""
    folder = tmp_path / "f"
    folder.mkdir()
    for i in (1, 2, 10):  # natural order 1, 2, 10; text order would be 1, 10, 2
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((8, 12, 3), i, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90°": tracking decodes pixels as stored, so must calibration
    Image.fromarray(np.full((8, 12, 3), 20, np.uint8)).save(folder / "f20.jpg", exif=exif, quality=100)
    (folder / "notes.webp").write_bytes(b"not a frame")  # not a frame suffix of the I/O layer
    pool = FramePool([folder])
    frames = list(pool.frames(range(len(pool))))
    assert len(pool) == 4 and [int(f[0, 0, 0]) for f in frames[:3]] == [1, 2, 10]
    assert frames[3].shape == (8, 12, 3)  # not rotated to 12x8
    # the gate's mask: void (255) is background, as in `diffvos track`; annotations keep it (J&F)
    video = tmp_path / "v"
    video.mkdir()
    ann = tmp_path / "ann"
    ann.mkdir()
    mask = np.zeros((8, 16), np.uint8)
    mask[:, :8] = 1
    mask[0, :] = 255  # DAVIS void border
    for i in range(3):
        cv2.imwrite(str(video / f"{i:05d}.png"), np.zeros((8, 16, 3), np.uint8))
        im = Image.fromarray(mask, "P")
        im.putpalette(DAVIS_PALETTE.tobytes())
        im.save(ann / f"{i:05d}.png")
    clip = open_clip(video, ann / "00000.png")
    assert clip.object_ids == [1] and int(clip.first.max()) == 1 and clip.truth is None and clip.frames == 3
    clip = open_clip(video, ann)
    assert clip.mask == "annotations" and len(clip.truth) == 3 and int(clip.truth[0].max()) == 255


def test_trt_cache_hex_and_header():
    assert scale_hex(127.0) == "3f800000"  # scale 1.0
    assert scale_hex(63.5) == "3f000000"  # scale 0.5
    assert trt_version_number("8.6.1") == 8601
    assert trt_version_number("10.3.0") == 100300
    text = format_cache({"x_t": 2.54, "/conv/out": 127.0, "zero": 0.0}, "8.6.1")
    header, amax = parse_cache(text)
    assert header == "TRT-8601-EntropyCalibration2"
    assert "/conv/out: 3f800000" in text.splitlines()
    assert "zero" not in amax
    assert amax["x_t"] == pytest.approx(2.54, rel=1e-6)


def test_calibration_inputs_are_the_runtime_x_t(tmp_path):
    """x_t = sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε with the runtime's seeded noise bank, computed by hand."""
    bundle = make_toy_bundle(tmp_path / "toy", ensemble=2, alpha_bar=0.64)
    frames = _frames(tmp_path / "f", 2)
    runtime = Runtime(bundle, backend="cpu")
    pool = FramePool([frames])
    got = list(calibration_inputs(Features(runtime.manifest, runtime.engines, seed=7), pool.frames(range(2))))
    eps = np.random.default_rng(7).standard_normal((2, 3, 64, 96), dtype=np.float32)
    for i, x_t in enumerate(got):
        x0 = cv2.imread(str(frames / f"{i:05d}.png"))[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
        np.testing.assert_allclose(x_t, 0.8 * x0[None] + 0.6 * eps, atol=1e-5)


def test_calibrate_toy_bundle(tmp_path):
    from tests.int8_models import write_clip

    bundle = make_toy_bundle(tmp_path / "toy", height=128, width=192, ensemble=2, alpha_bar=0.9)
    video, _, ann = write_clip(tmp_path / "clip", 12)
    out = tmp_path / "int8"
    opts = CalibrationOptions(num_frames=6, heldout=3, masks=[str(ann)], proxy_frames=6, speed_runs=1,
                              configs=[QuantConfig("conv", ("Conv",))])
    report = calibrate_bundle(bundle, [video], out, opts, log=lambda s: None)
    m = read_manifest(out)
    assert m.precision == "int8" and m.graphs["features"].precision == "int8"
    import onnx
    import onnxruntime as ort

    ops = {n.op_type for n in onnx.load(str(out / "features.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    sess = ort.InferenceSession(str(out / "features.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x_t": np.zeros((2, 3, 128, 192), np.float32)})[0].shape == (1, 16, 16, 24)
    assert report.calibration_frames == 6 and report.heldout_frames == 3
    assert report.accuracy["min_cosine"] > 0.99 and report.passed
    assert m.calibration.accuracy == report.accuracy and m.calibration.source_bundle == str(bundle)
    assert report.videos[0].role == "calibration" and report.videos[0].frames == 11 - 5  # 6 calibration frames
    assert len(report.sensitivity) == 1 and report.sensitivity[0]["op"] == "Conv"
    # legacy TensorRT cache: the Conv's input is the 8x8 average of x_t, where the noise
    # (std sqrt(.1)/8) nearly vanishes: its range is about sqrt(.9)·max|x0| ≈ 0.9
    header, amax = parse_cache((out / "calibration.cache").read_text())
    assert header.startswith("TRT-") and header.endswith("-EntropyCalibration2")
    assert 0.6 < amax["pooled"] < 1.3
    assert (out / "calibration_ranges.json").is_file()


@pytest.fixture(scope="module")
def tiny_adm_bundle(adm_fixture_dir):
    pytest.importorskip("torch")
    from tests.adm_bundle import tiny_adm_bundle as build

    return build(adm_fixture_dir)


def test_calibrate_tiny_adm_runs_the_whole_pipeline(tiny_adm_bundle, davis_root, tmp_path):
    """Attention MatMuls and GroupNorm: quantise, rank, search, gate, report; TensorRT rules hold.
    Random weights make the masks chaotic, so only that it runs and reports is checked here."""
    video = davis_root / "JPEGImages" / "480p" / "surf"
    ann = davis_root / "Annotations" / "480p"
    opts = CalibrationOptions(num_frames=4, heldout=2, method="minmax", sensitivity_nodes=3, proxy_frames=4,
                              speed_runs=1, masks=[str(ann / "surf")], allow_failed=True,
                              heldout_videos=[(str(davis_root / "JPEGImages" / "480p" / "dog-agility"),
                                               str(ann / "dog-agility"))], heldout_max_frames=4)
    report = calibrate_bundle(tiny_adm_bundle, [video], tmp_path / "int8", opts, log=lambda s: None)
    rows = {r["name"]: r for r in report.candidates}
    assert rows["conv+matmul"]["graph_sha256"] != rows["conv"]["graph_sha256"]  # attention MatMuls exist
    assert rows["conv+matmul"]["int8_flop_fraction"] == pytest.approx(1.0)
    assert report.accuracy["min_cosine"] >= 0.99 and report.tensorrt_violations == []
    assert len(report.sensitivity) == 3 and report.search is not None and report.search.steps
    (held,) = report.videos
    assert held.frames == 3 and held.jf_delta is not None and 0.0 <= held.mean_iou <= 1.0
    assert read_manifest(tmp_path / "int8").calibration.passed == report.passed


def test_calibrate_refuses_non_fp32(tmp_path):
    from diffvos.bundle import write_manifest
    from diffvos.errors import BundleError

    bundle = make_toy_bundle(tmp_path / "toy")
    m = read_manifest(bundle)
    m.precision = "int8"
    write_manifest(bundle, m)
    with pytest.raises(BundleError, match="needs an fp32 bundle"):
        calibrate_bundle(bundle, [_frames(tmp_path / "f", 4)], tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_calibrate_command_line(tmp_path, capsys):
    import argparse

    from diffvos.calibration import cli
    from tests.int8_models import write_clip

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    bundle = make_toy_bundle(tmp_path / "toy", height=128, width=192, alpha_bar=0.9)
    video, mask, _ = write_clip(tmp_path / "clip", 8)
    args = parser.parse_args(["calibrate", "--bundle", str(bundle), "--frames", str(video), "--masks", str(mask),
                              "--num-frames", "4", "--heldout", "2", "--ops", "Conv", "--no-search", "--method",
                              "minmax", "--speed-runs", "1", "--output", str(tmp_path / "int8")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "held-out features (2 frames; reported, not gated): cosine min" in out and "PASS" in out
    calibration = read_manifest(tmp_path / "int8").calibration
    assert calibration.chosen["op_types"] == ["Conv"] and calibration.search is None
    args = parser.parse_args(["calibrate", "--bundle", str(bundle), "--frames", str(video), "--output", "x",
                              "--heldout-video", str(video)])
    with pytest.raises(InputError, match="one --heldout-mask per --heldout-video"):
        args.func(args)
