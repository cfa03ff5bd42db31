"""Stable Diffusion attention bundles and DDIM inversion in latent space, on a tiny random SD.

References: diffusers' own U-Net run whole (a pre-hook on attn1 sees its input; the U-Net's
output is the noise prediction) and a plain PyTorch DDIM-inversion loop on the VAE latent.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from test_sd import _build  # noqa: E402

from diffvos.bundle import read_manifest  # noqa: E402
from diffvos.cli import main  # noqa: E402

T, LAYER = 100, 4  # up block 1 (cross-attention), resnet 1: attentions[1] follows it

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def sd_attention(tmp_path_factory, torch_one_thread):
    root = tmp_path_factory.mktemp("sd_attn")
    _build(root / "model")
    out = root / "bundle"
    rc = main(["export", "sd", "--model", str(root / "model"), "--timestep", str(T), "--layer", str(LAYER),
               "--height", "64", "--width", "96", "--ensemble", "2", "--attention", "--noise-graph",
               "--output", str(out)])
    assert rc == 0
    return root / "model", out


def test_sd_attention_graph_matches_attn1_in_the_full_unet(sd_attention):
    import onnxruntime as ort

    from diffvos.export.sd import load_sd

    model_dir, out = sd_attention
    m = read_manifest(out)
    a = m.affinity
    assert a.kind == "attention" and a.module == "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert m.channels == 2 * a.heads * a.head_dim
    c = load_sd(model_dir)
    attn = c.unet.up_blocks[1].attentions[1].transformer_blocks[0].attn1
    seen = []
    handle = attn.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0] if args else
                                                                                  kwargs["hidden_states"]),
                                            with_kwargs=True)
    x = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        c.unet(x, T, encoder_hidden_states=c.prompt_embeds.expand(2, -1, -1))
        hs = seen[0]
        q, k = attn.to_q(hs), attn.to_k(hs)  # [2, h*w, heads*d]
    handle.remove()
    grid = m.graphs["features"].outputs["features"][2:]
    ref = torch.cat([q, k], dim=2).transpose(1, 2).reshape(2, -1, *grid).mean(0).numpy()
    session = ort.InferenceSession(str(out / "features.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x_t": x.numpy()})[0][0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_sd_ddim_inversion_in_latent_space_matches_pytorch(sd_attention):
    import diffvos
    from diffvos.export.sd import VAEEncoderGraph, load_sd
    from diffvos.runtime.preprocess import to_model_input

    model_dir, out = sd_attention
    runtime = diffvos.Runtime(out, backend="cpu")
    session = runtime.session(96, 64, color="RGB", inversion_steps=4)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    steps = {}
    inverter = session.features.inverter
    x0 = to_model_input(frame, (64, 96), runtime.manifest.preprocess)
    c = load_sd(model_dir)
    with torch.no_grad():
        latent = VAEEncoderGraph(c.vae).eval()(torch.from_numpy(x0)[None])
    inverter(latent.numpy()[0], observe=lambda k, x: steps.__setitem__(k, x.copy()))
    alphas = np.asarray(runtime.manifest.ddim.alphas_cumprod)
    assert inverter.timesteps == [0, 25, 50, 75, 100]
    x, a_prev = latent, 1.0
    with torch.no_grad():
        for k in range(1, 5):
            eps = c.unet(x, inverter.timesteps[k - 1], encoder_hidden_states=c.prompt_embeds).sample
            a = float(alphas[inverter.timesteps[k]])
            x = a**0.5 * (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5 + (1 - a) ** 0.5 * eps
            a_prev = a
            assert np.abs(steps[k] - x.numpy()).max() / np.abs(x.numpy()).max() <= 1e-4, k
    # the whole frame path (VAE graph -> inversion -> attention graph) runs in a session
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 1
    session.step(frame, mask=mask)
    assert session.step(frame).shape == (64, 96)
    assert session.timings["inversion_ms"] > 0
