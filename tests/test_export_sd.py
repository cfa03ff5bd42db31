"""`diffvos export sd` end to end: bundle with a VAE graph + truncated U-Net, run by the runtime
(VAE -> noise in latent space -> U-Net) and compared with the same computation in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from test_sd import _build  # noqa: E402

from diffvos.bundle import read_manifest  # noqa: E402
from diffvos.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def sd_bundle(tmp_path_factory, torch_one_thread):
    root = tmp_path_factory.mktemp("sd")
    _build(root / "model")
    out = root / "bundle"
    rc = main(["export", "sd", "--model", str(root / "model"), "--timestep", "100", "--layer", "4",
               "--height", "64", "--width", "96", "--ensemble", "2", "--output", str(out)])
    assert rc == 0
    return root / "model", out


def test_manifest_of_sd_bundle(sd_bundle):
    _, out = sd_bundle
    m = read_manifest(out)
    assert m.backbone == "sd" and set(m.graphs) == {"features", "vae_encoder"}
    assert m.latent is not None and m.latent.scaling_factor == pytest.approx(0.18215) and m.latent.downsample == 4
    assert m.graphs["vae_encoder"].inputs == {"image": [1, 3, 64, 96]}
    assert m.graphs["features"].inputs == {"x_t": ["draws", 4, 16, 24]}  # B streams x E=2 draws
    assert m.streams.max_streams == 2
    v = m.export.verification
    assert v["features"].cosine > 0.9999 and v["vae_encoder"].cosine > 0.9999
    assert m.stride * m.graphs["features"].outputs["features"][2] == 64


def test_runtime_pipeline_matches_pytorch(sd_bundle):
    from diffvos.export.sd import TruncatedSDUNet, VAEEncoderGraph, load_sd
    from diffvos.runtime.features import Features
    from diffvos.runtime.noise import NoiseInjector
    from diffvos.runtime.preprocess import to_model_input
    from diffvos.runtime.session import Runtime

    model_dir, out = sd_bundle
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    runtime = Runtime(out, backend="cpu")
    got = Features(runtime.manifest, runtime.engines, seed=5)(frame)
    m = runtime.manifest
    c = load_sd(model_dir)
    x0 = to_model_input(frame, (64, 96), m.preprocess)
    with torch.no_grad():
        latent = VAEEncoderGraph(c.vae).eval()(torch.from_numpy(x0)[None]).numpy()[0]
        x_t = NoiseInjector(m.alpha_bar, m.ensemble, latent.shape, seed=5)(latent)
        ref = TruncatedSDUNet(c.unet, 100, 4, c.prompt_embeds, c.vae_factor).eval()(torch.from_numpy(x_t)).numpy()[0]
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-4


def test_sd_layer_out_of_range(sd_bundle, tmp_path, capsys):
    model_dir, _ = sd_bundle
    rc = main(["export", "sd", "--model", str(model_dir), "--layer", "99", "--height", "64", "--width", "96",
               "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "99" in err and "stride" in err
    assert not (tmp_path / "o").exists()
