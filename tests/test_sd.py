"""Stable Diffusion backbone: loading, ᾱ, the layer table, the truncated U-Net and the VAE graph.

Everything runs on a tiny randomly initialised pipeline saved in the diffusers layout; the
references are diffusers' own modules (full U-Net forward with a hook, vae.encode, DDPMScheduler).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffvos.errors import CheckpointError, ExportError  # noqa: E402
from diffvos.export.sd import (  # noqa: E402
    TruncatedSDUNet,
    VAEEncoderGraph,
    alpha_bar,
    alphas_cumprod,
    load_sd,
    sd_layer_table,
)

T = 100
# CLIP-style vocabulary (SD 2.x pads with "!"); "" tokenizes to <start> <end> then padding.
VOCAB = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3, "b</w>": 4, "a": 5, "b": 6}
MAX_LEN = 8

# The public SD 2.1 unet/config.json entries the layer table reads.
SD21_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD21_VAE = {"block_out_channels": [128, 256, 512, 512]}


def _build(root: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
    )
    # Random init leaves some output projections at zero; perturb every tensor so each path counts.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.18215,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_size=12, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MAX_LEN, projection_dim=12, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    ))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    tok = root / "tokenizer"  # the slow-tokenizer files SD repositories ship
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps(VOCAB))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LEN, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>", "do_lower_case": True,
    }))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_sd")
    _build(root)
    return root


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_sd(sd_dir)


def _latents(e: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(e, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _hooked_reference(sd, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Mean over the batch of what a forward hook on up-resnet ``layer`` sees in a full forward."""
    row = sd_layer_table(sd.unet, x.shape[-2], x.shape[-1])[layer]
    resnet = sd.unet.up_blocks[row["block"]].resnets[row["resnet"]]
    seen = []
    handle = resnet.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            sd.unet(x, T, encoder_hidden_states=sd.prompt_embeds.expand(x.shape[0], -1, -1))
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0].mean(dim=0, keepdim=True)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----------------------------------------------------------------------------- loading


def test_load_reads_every_component(sd, sd_dir):
    from transformers import CLIPTextModel

    assert sd.vae_factor == 4  # 3 VAE blocks in the tiny config: from the config, not a constant 8
    assert sd.latent_channels == 4 and sd.scaling_factor == pytest.approx(0.18215)
    assert sd.scheduler_config["beta_schedule"] == "scaled_linear"
    # Independent reference for the empty prompt: hand-built ids <start> <end> ! ! ...
    ids = torch.tensor([[0, 1] + [2] * (MAX_LEN - 2)])
    with torch.no_grad():
        ref = CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval()(ids)[0]
    assert sd.prompt_embeds.shape == (1, MAX_LEN, 12)
    torch.testing.assert_close(sd.prompt_embeds, ref, rtol=0, atol=0)


def test_precomputed_embedding_replaces_the_text_encoder(sd, sd_dir, tmp_path):
    root = tmp_path / "no_text"
    shutil.copytree(sd_dir, root, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    emb = tmp_path / "empty.npy"
    np.save(emb, sd.prompt_embeds.numpy())
    with pytest.raises(CheckpointError, match="text_encoder"):
        load_sd(root)
    loaded = load_sd(root, prompt_embeds=emb)
    torch.testing.assert_close(loaded.prompt_embeds, sd.prompt_embeds, rtol=0, atol=0)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 4, 5), np.float32))
    with pytest.raises(CheckpointError, match="cross_attention_dim 12"):
        load_sd(root, prompt_embeds=bad)


def test_load_errors_name_the_path(sd_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found.*network") as exc:
        load_sd(tmp_path / "nowhere")
    assert "nowhere" in str(exc.value)
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(CheckpointError, match=r"'vae/' is missing") as exc:
        load_sd(broken)
    assert str(broken / "vae") in str(exc.value)
    (broken / "vae").mkdir()
    (broken / "vae" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot load vae"):
        load_sd(broken)


# ----------------------------------------------------------------------------- schedule, layers


@pytest.mark.parametrize("config", [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
    {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.03, "num_train_timesteps": 200},
])
def test_alpha_bar_matches_diffusers(config):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(**config).alphas_cumprod.double().numpy()
    ours = alphas_cumprod(config)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-7)
    assert alpha_bar(config, 100) == pytest.approx(ref[100], rel=2e-5)


def test_alpha_bar_sd21_value_and_range():
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # hand-written schedule
    assert alpha_bar(cfg, 100) == pytest.approx(np.prod(1 - betas[:101]), rel=1e-12)
    with pytest.raises(ExportError, match="0..999"):
        alpha_bar(cfg, 1000)


def test_layer_table_sd21_at_480x832():
    from diffvos.export.sd import vae_scale_factor

    f = vae_scale_factor(SD21_VAE)
    assert f == 8
    table = sd_layer_table(SD21_UNET, 480 // f, 832 // f, vae_factor=f)
    assert len(table) == 12
    assert [r["stride"] for r in table] == [64] * 3 + [32] * 3 + [16] * 3 + [8] * 3
    assert [r["channels"] for r in table] == [1280] * 6 + [640] * 3 + [320] * 3
    assert table[9] == {"layer": 9, "block": 3, "resnet": 0, "stride": 8, "channels": 320, "height": 60, "width": 104}
    assert (table[0]["height"], table[0]["width"]) == (8, 13)  # 60 -> 30 -> 15 -> 8 (ceil)


def test_layer_table_matches_the_real_feature_shapes(sd):
    table = sd.layer_table(40, 56)
    seen = []
    hooks = [r.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
             for b in sd.unet.up_blocks for r in b.resnets]
    try:
        with torch.no_grad():
            sd.unet(_latents(1, 10, 14), T, encoder_hidden_states=sd.prompt_embeds)
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(r["channels"], r["height"], r["width"]) for r in table]
    assert [r["stride"] for r in table] == [16] * 3 + [8] * 3 + [4] * 3


def test_bad_layer_lists_strides_and_channels(sd):
    with pytest.raises(ExportError, match=r"out of range 0\.\.8 .*0: stride 16, 16 ch.*8: stride 4, 8 ch"):
        TruncatedSDUNet(sd.unet, T, 9, sd.prompt_embeds, vae_factor=sd.vae_factor)
    with pytest.raises(ExportError, match="out of range"):
        TruncatedSDUNet(sd.unet, T, -1, sd.prompt_embeds)


# ----------------------------------------------------------------------------- truncated U-Net


@pytest.mark.parametrize("layer", [0, 3, 5, 8])
@pytest.mark.parametrize("size", [(8, 8), (10, 14)])
def test_truncated_equals_hook_on_full_forward(sd, layer, size):
    x = _latents(2, *size, seed=layer)
    ref = _hooked_reference(sd, x, layer)
    model = TruncatedSDUNet(sd.unet, T, layer, sd.prompt_embeds).eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-5
    if size == (8, 8):  # the time step really is folded in: another t changes the features
        other = TruncatedSDUNet(sd.unet, 900, layer, sd.prompt_embeds).eval()
        with torch.no_grad():
            assert _rel(other(x), ref) > 1e-3


def test_truncated_sd15_style_and_scale_shift_resnets():
    """Conv attention projections (SD 1.x) and scale/shift time conditioning fold correctly too."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=6, attention_head_dim=4, norm_num_groups=4, use_linear_projection=False,
        resnet_time_scale_shift="scale_shift",
    ).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fake = SimpleNamespace(unet=unet, prompt_embeds=torch.randn(1, 5, 6))
    x = _latents(2, 6, 10)
    for layer in (1, 3):
        with torch.no_grad():
            out = TruncatedSDUNet(unet, T, layer, fake.prompt_embeds)(x)
        assert _rel(out, _hooked_reference(fake, x, layer)) < 1e-5


def test_truncated_keeps_only_what_layer_needs(sd):
    model = TruncatedSDUNet(sd.unet, T, 3, sd.prompt_embeds)
    names = set(model.state_dict())
    assert not any("time_emb" in n or "conv_out" in n or "conv_norm_out" in n for n in names)
    # Layer 3 = up block 1, resnet 0: its attention and everything after it are dropped.
    assert len(model.up) == 2 and len(model.up[1].resnets) == 1 and len(model.up[1].attentions) == 0
    assert model.up[1].resampler is None and model.up[0].resampler is not None
    own = {id(p) for p in sd.unet.parameters()}
    assert all(id(p) in own for p in model.parameters())  # shared, not copied
    n_full = sum(p.numel() for p in sd.unet.parameters())
    n_cut = sum(p.numel() for p in model.parameters())
    n_time = sum(p.numel() for n, p in sd.unet.named_parameters() if "time_emb" in n)
    assert n_cut < n_full - n_time


# ----------------------------------------------------------------------------- VAE


def test_vae_graph_equals_encode_mean_and_std(sd):
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        dist = sd.vae.encode(x).latent_dist
        mean = VAEEncoderGraph(sd.vae).eval()(x)
        mean2, std = VAEEncoderGraph(sd.vae, posterior="sample").eval()(x)
    assert mean.shape == (1, 4, 8, 12)
    torch.testing.assert_close(mean, dist.mean * 0.18215, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mean2, mean, rtol=0, atol=0)
    torch.testing.assert_close(std, dist.std * 0.18215, rtol=1e-6, atol=1e-7)
    with pytest.raises(ExportError, match="posterior"):
        VAEEncoderGraph(sd.vae, posterior="mode")
    with pytest.raises(ExportError, match="multiple of the VAE factor 4"):
        VAEEncoderGraph(sd.vae)(x[..., :30])


# ----------------------------------------------------------------------------- ONNX


def _export(module, args, path: Path, names_in, dynamic=None) -> None:
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=["out"],
                          dynamic_axes=dynamic, opset_version=17, do_constant_folding=True, dynamo=False)


def _ort(path: Path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_truncated_unet_matches_torch(sd, tmp_path):
    import onnx

    layer = 5
    model = TruncatedSDUNet(sd.unet, T, layer, sd.prompt_embeds).eval()
    path = tmp_path / "features.onnx"
    _export(model, (_latents(2, 10, 14),), path, ["x_t"], {"x_t": {0: "E", 2: "h", 3: "w"}, "out": {2: "fh", 3: "fw"}})
    sess = _ort(path)
    for e, size in ((2, (10, 14)), (3, (8, 8))):  # dynamic: an odd grid (forwarded up-sample sizes) and an even one
        x = _latents(e, *size, seed=7)
        got = sess.run(None, {"x_t": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == ref.shape
        assert _rel(got, ref) < 1e-4, _rel(got, ref)
        assert _rel(got, _hooked_reference(sd, x, layer).numpy()) < 1e-4

    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Sin", "Cos"}, ops  # no sinusoidal time embedding
    assert [i.name for i in graph.input] == ["x_t"]
    shapes = [tuple(t.dims) for t in graph.initializer]
    assert (len(VOCAB), 12) not in shapes  # no token embedding: the text encoder is not in the graph

    # Reference: the full U-Net with t and the prompt as inputs holds the time MLP (Sin/Cos) and more weights.
    class Full(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x, t, ctx):
            return self.unet(x, t, encoder_hidden_states=ctx).sample

    full = tmp_path / "full.onnx"
    _export(Full(sd.unet).eval(), (_latents(2, 8, 8), torch.tensor([T] * 2), sd.prompt_embeds.expand(2, -1, -1)),
            full, ["x", "t", "ctx"])
    fgraph = onnx.load(str(full)).graph
    assert {"Sin", "Cos"} <= {n.op_type for n in fgraph.node}
    weights = lambda g: sum(int(np.prod(t.dims)) for t in g.initializer)  # noqa: E731
    assert len(graph.initializer) < len(fgraph.initializer)
    assert weights(graph) < weights(fgraph)


def test_onnx_vae_encoder_matches_torch(sd, tmp_path):
    model = VAEEncoderGraph(sd.vae).eval()
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(5)) * 2 - 1
    path = tmp_path / "vae.onnx"
    _export(model, (x,), path, ["image"])
    got = _ort(path).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = (sd.vae.encode(x).latent_dist.mean * sd.scaling_factor).numpy()
    assert _rel(got, ref) < 1e-4
