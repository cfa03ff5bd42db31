"""Prompt learning on a tiny random Stable Diffusion: the recording processor leaves the U-Net's
output unchanged and records the softmax attention computed by hand; the loss falls and the
token's map moves toward the mask; the bundle folds the learned prompt (checked against the
truncated U-Net in PyTorch with that context)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from test_sd import _build  # noqa: E402

from diffvos.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory, torch_one_thread):
    import cv2

    from diffvos.io.masks import encode_indexed_png

    root = tmp_path_factory.mktemp("prompt")
    _build(root / "model")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (64, 96, 3)).astype(np.uint8)
    frame[16:48, 24:64] = (30, 200, 240)
    cv2.imwrite(str(root / "frame.png"), frame)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:64] = 1
    (root / "mask.png").write_bytes(encode_indexed_png(mask))
    return root


def test_recording_processor_is_the_usual_attention(scene):
    from diffvos.export.prompt_learning import _token_maps
    from diffvos.export.sd import load_sd

    c = load_sd(scene / "model")
    x = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = c.unet(x, 100, encoder_hidden_states=ctx).sample
    attn = c.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2
    seen = []
    hook = attn.register_forward_pre_hook(lambda m, a, k: seen.append(a[0] if a else k["hidden_states"]),
                                          with_kwargs=True)
    recorders, handles = _token_maps(c.unet, 1)
    try:
        with torch.no_grad():
            got = c.unet(x, 100, encoder_hidden_states=ctx).sample
    finally:
        for h in handles + [hook]:
            h.remove()
        for _, _, a, processor in recorders:
            a.processor = processor
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    rec = next(r for name, r, _, _ in recorders if name == "up_blocks.1.attentions.0.transformer_blocks.0.attn2")
    with torch.no_grad():  # softmax(q k^T / sqrt(d)) per head, the token's column, mean over heads
        d = attn.to_q.out_features // attn.heads
        q = attn.to_q(seen[0]).reshape(1, -1, attn.heads, d).transpose(1, 2)
        k = attn.to_k(ctx).reshape(1, -1, attn.heads, d).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)[..., 1].mean(1)
    torch.testing.assert_close(rec.map, probs, rtol=1e-5, atol=1e-6)
    assert rec.size[0] * rec.size[1] == probs.shape[1]


def test_prompt_learn_cli_learns_and_folds_the_prompt(scene):
    import diffvos
    from diffvos.bundle import read_manifest
    from diffvos.export.sd import TruncatedSDUNet, load_sd
    from diffvos.runtime.features import Features

    out = scene / "bundle"
    rc = main(["prompt-learn", "--model", str(scene / "model"), "--frame", str(scene / "frame.png"),
               "--mask", str(scene / "mask.png"), "--output", str(out), "--steps", "30", "--layer", "4",
               "--height", "64", "--width", "96", "--ensemble", "1", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "prompt_learning/report.json").read_text())
    losses = report["losses"]
    assert len(losses) == 30 and losses[-1] < 0.85 * losses[0]  # the loss falls
    assert report["map_mask_iou_after"] > report["map_mask_iou_before"]  # the map moves toward the mask
    assert (out / "prompt_learning/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = read_manifest(out)
    assert m.checkpoint.prompt_embeds.startswith("prompt learning: one token, 30 steps")
    context = torch.from_numpy(np.load(out / "prompt_learning/context.npy"))
    c = load_sd(scene / "model")
    assert not torch.allclose(context, c.prompt_embeds)
    # the bundle's features are the U-Net's with the learned context folded in
    runtime = diffvos.Runtime(out, backend="cpu")
    feats = Features(m, runtime.engines, seed=3)
    frame = np.random.default_rng(5).integers(0, 255, (64, 96, 3), np.uint8)
    feed = feats.prepare(frame)
    got = runtime.engines["features"].infer(feed)["features"][0]
    with torch.no_grad():
        ref = TruncatedSDUNet(c.unet, 100, 4, context, c.vae_factor).eval()(torch.from_numpy(feed["x_t"])).numpy()[0]
        empty = TruncatedSDUNet(c.unet, 100, 4, c.prompt_embeds, c.vae_factor).eval()(
            torch.from_numpy(feed["x_t"])).numpy()[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    assert np.abs(got - empty).max() / np.abs(empty).max() > 1e-3


def test_prompt_learn_refuses_an_empty_mask_and_an_existing_output(scene, tmp_path, capsys):
    from diffvos.io.masks import encode_indexed_png

    (tmp_path / "empty.png").write_bytes(encode_indexed_png(np.zeros((64, 96), np.uint8)))
    rc = main(["prompt-learn", "--model", str(scene / "model"), "--frame", str(scene / "frame.png"),
               "--mask", str(tmp_path / "empty.png"), "--output", str(tmp_path / "b"), "--height", "64",
               "--width", "96"])
    assert rc == 1 and "mask has no object" in capsys.readouterr().err and not (tmp_path / "b").exists()
    rc = main(["prompt-learn", "--model", str(scene / "model"), "--frame", str(scene / "frame.png"),
               "--mask", str(scene / "mask.png"), "--object", "5", "--output", str(tmp_path / "b"), "--height", "64",
               "--width", "96"])
    assert rc == 1 and "marks no object with id 5" in capsys.readouterr().err and not (tmp_path / "b").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    rc = main(["prompt-learn", "--model", str(scene / "model"), "--frame", str(scene / "frame.png"),
               "--mask", str(scene / "mask.png"), "--output", str(tmp_path / "taken"), "--height", "64",
               "--width", "96"])
    assert rc == 1 and "--force" in capsys.readouterr().err
    assert (tmp_path / "taken" / "x").read_text() == "keep"
