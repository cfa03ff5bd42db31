"""INT8 calibration: frame sampling, runtime-exact calibration inputs, Q/DQ bundles, TRT cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from diffvos.bundle import read_manifest
from diffvos.calibration.calibrate import (
    CalibrationOptions,
    calibrate_bundle,
    calibration_inputs,
    mask_agreement,
)
from diffvos.calibration.frames import FramePool, split_indices
from diffvos.calibration.quantize import Candidate, QuantConfig, choose
from diffvos.calibration.trt_cache import (
    format_cache,
    parse_cache,
    scale_hex,
    trt_version_number,
)
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
    # the held-out mask: void (255) is background, as in `diffvos track`
    bundle = make_toy_bundle(tmp_path / "toy", height=8, width=16, stride=8)
    video = tmp_path / "v"
    video.mkdir()
    for i in range(3):
        cv2.imwrite(str(video / f"{i:05d}.png"), np.zeros((8, 16, 3), np.uint8))
    mask = np.zeros((8, 16), np.uint8)
    mask[:, :8] = 1
    mask[0, :] = 255  # DAVIS void border
    im = Image.fromarray(mask, "P")
    im.putpalette(DAVIS_PALETTE.tobytes())
    im.save(tmp_path / "m.png")
    agreement = mask_agreement(bundle, bundle, str(video), str(tmp_path / "m.png"), CalibrationOptions())
    assert agreement["objects"] == 1 and agreement["mean_iou"] == 1.0


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


def test_choose_prefers_fastest_passing():
    mk = lambda n, cos, ms: Candidate(QuantConfig(n), Path(n), cos, 0.0, ms)  # noqa: E731
    cands = [mk("a", 0.98, 10), mk("b", 0.995, 30), mk("c", 0.999, 50)]
    assert choose(cands, 0.99).config.name == "b"
    assert choose(cands, 0.9999).config.name == "c"  # none passes: the most accurate


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
    bundle = make_toy_bundle(tmp_path / "toy", ensemble=2, alpha_bar=0.9)
    frames = _frames(tmp_path / "f", 12)
    out = tmp_path / "int8"
    opts = CalibrationOptions(num_frames=6, heldout=3, configs=[QuantConfig("conv", ("Conv",), keep_first_last=False)],
                              sensitivity_limit=1, time_runs=1)
    report = calibrate_bundle(bundle, [frames], out, opts, log=lambda s: None)
    m = read_manifest(out)
    assert m.precision == "int8" and m.graphs["features"].precision == "int8"
    import onnx
    import onnxruntime as ort

    ops = {n.op_type for n in onnx.load(str(out / "features.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    sess = ort.InferenceSession(str(out / "features.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x_t": np.zeros((2, 3, 64, 96), np.float32)})[0].shape == (1, 16, 8, 12)
    assert report["calibration_frames"] == 6 and report["heldout_frames"] == 3
    assert report["accuracy"]["min_cosine"] > 0.99 and report["passed"]
    assert m.calibration.accuracy == report["accuracy"] and m.calibration.source_bundle == str(bundle)
    assert len(report["sensitivity"]) == 1 and report["sensitivity"][0]["op"] == "Conv"
    # legacy TensorRT cache: the Conv's input is the 8x8 average of x_t, where the noise
    # (std sqrt(.1)/8) nearly vanishes: its range is about sqrt(.9)·max|x0| ≈ 0.95
    header, amax = parse_cache((out / "calibration.cache").read_text())
    assert header.startswith("TRT-") and header.endswith("-EntropyCalibration2")
    assert 0.6 < amax["pooled"] < 1.3
    assert (out / "calibration_ranges.json").is_file()


@pytest.fixture(scope="module")
def tiny_adm_bundle(adm_fixture_dir):
    pytest.importorskip("torch")
    from tests.adm_bundle import tiny_adm_bundle as build

    return build(adm_fixture_dir)


def test_calibrate_tiny_adm_with_mask_agreement(tiny_adm_bundle, davis_root, tmp_path):
    video = davis_root / "JPEGImages" / "480p" / "surf"
    held = davis_root / "JPEGImages" / "480p" / "dog-agility"
    opts = CalibrationOptions(num_frames=4, heldout=2, sensitivity=False, time_runs=0, method="minmax",
                              configs=[QuantConfig("conv-keep-ends", ("Conv",), keep_first_last=True)],
                              heldout_video=str(held), heldout_mask=str(davis_root / "Annotations" / "480p" / "dog-agility" / "00000.png"),
                              heldout_max_frames=3)
    report = calibrate_bundle(tiny_adm_bundle, [video], tmp_path / "int8", opts, log=lambda s: None)
    assert report["accuracy"]["min_cosine"] >= 0.99
    masks = report["masks"]
    if "skipped" not in masks:
        assert masks["frames"] == 2 and 0.0 <= masks["mean_iou"] <= 1.0
        assert masks["mean_iou"] >= 0.8
    assert read_manifest(tmp_path / "int8").calibration.passed == report["passed"]


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

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    bundle = make_toy_bundle(tmp_path / "toy", alpha_bar=0.9)
    frames = _frames(tmp_path / "f", 8)
    args = parser.parse_args(["calibrate", "--bundle", str(bundle), "--frames", str(frames), "--num-frames", "4",
                              "--heldout", "2", "--ops", "Conv", "--sensitivity", "0", "--method", "minmax",
                              "--output", str(tmp_path / "int8")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "held-out features (2 frames): min cosine" in out and "PASS" in out
    assert read_manifest(tmp_path / "int8").calibration.chosen["op_types"] == ["Conv"]
