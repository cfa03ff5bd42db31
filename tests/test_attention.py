"""Attention-kernel propagation and DDIM inversion on the tiny ADM fixture.

References: the full guided-diffusion-layout U-Net run in PyTorch (a forward hook on the
attention block, the network's own noise prediction), a dense PyTorch formula of the windowed
per-head softmax / top-k / head combination, and a plain PyTorch DDIM-inversion loop.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from diffvos.bundle import read_manifest, write_manifest  # noqa: E402
from diffvos.cli import main  # noqa: E402
from diffvos.config import PropagationConfig  # noqa: E402
from diffvos.errors import BundleError, InputError  # noqa: E402
from diffvos.runtime.attention import AttentionPropagator  # noqa: E402
from diffvos.runtime.ddim import inversion_timesteps  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model(fixture):
    from diffvos.export.adm import ADMConfig, ADMUNet

    cfg = json.loads((fixture / "adm_tiny_config.json").read_text())
    model = ADMUNet(ADMConfig.from_dict(cfg))
    model.load_state_dict(torch.load(fixture / "adm_tiny_state_dict.pt", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def attention_bundle(tmp_path_factory, adm_fixture_dir, torch_one_thread):
    out = tmp_path_factory.mktemp("attn") / "adm_attention"
    rc = main(["export", "adm", "--checkpoint", str(adm_fixture_dir / "adm_tiny_state_dict.pt"),
               "--model-config", str(adm_fixture_dir / "adm_tiny_config.json"), "--timestep", "30", "--layer", "6",
               "--height", "64", "--width", "96", "--ensemble", "2", "--attention", "--noise-graph",
               "--output", str(out)])
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------------- export


def test_manifest_declares_the_attention_layer(attention_bundle):
    m = read_manifest(attention_bundle)
    a = m.affinity
    assert (a.kind, a.heads, a.head_dim, a.module) == ("attention", 4, 16, "output_blocks.6.1")
    assert (m.stride, m.channels) == (8, 2 * 4 * 16)
    assert m.graphs["features"].outputs == {"features": ["streams", 128, 8, 12]}  # streams x (q, k) of 4 heads x 16
    assert m.ddim is not None and m.ddim.graph in m.graphs and len(m.ddim.alphas_cumprod) == 1000
    assert m.graphs["noise_prediction"].inputs == {"x_t": [1, 3, 64, 96], "timestep": [1]}
    assert m.export.verification["noise_prediction"].max_rel_error < 1e-4


def test_attention_graph_matches_a_hook_on_the_full_network(attention_bundle, adm_fixture_dir):
    import onnxruntime as ort

    golden = np.load(adm_fixture_dir / "adm_tiny_golden.npz")
    model = _model(adm_fixture_dir)
    block = model.output_blocks[6][1]
    seen = []
    handle = block.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(torch.from_numpy(golden["x_t"]), torch.tensor([30, 30]))
    handle.remove()
    x = seen[0]  # [2, 64, 8, 12], the attention block's input
    b, c, h, w = x.shape
    with torch.no_grad():  # guided-diffusion's legacy layout: per head [q, k, v] channel blocks
        qkv = block.qkv(block.norm(x.reshape(b, c, -1))).reshape(b, 4, 3, 16, h * w)
    ref = torch.cat([qkv[:, :, 0].reshape(b, 64, h, w), qkv[:, :, 1].reshape(b, 64, h, w)], 1).mean(0).numpy()
    session = ort.InferenceSession(str(attention_bundle / "features.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x_t": golden["x_t"]})[0][0]
    assert got.shape == ref.shape == (128, 8, 12)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_layer_without_attention_is_refused_with_the_valid_ones(adm_fixture_dir, tmp_path, capsys):
    rc = main(["export", "adm", "--checkpoint", str(adm_fixture_dir / "adm_tiny_state_dict.pt"),
               "--model-config", str(adm_fixture_dir / "adm_tiny_config.json"), "--layer", "9",
               "--height", "64", "--width", "96", "--attention", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "layer 9 has no self-attention" in err and "6: stride 8, 4 heads x 16" in err
    assert not (tmp_path / "o").exists()


def test_manifest_with_inconsistent_attention_geometry_is_refused(attention_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(attention_bundle, copy)
    m = read_manifest(copy)
    m.affinity = dataclasses.replace(m.affinity, heads=3)
    write_manifest(copy, m)
    with pytest.raises(BundleError, match="2 x heads x head_dim"):
        read_manifest(copy)


# ---------------------------------------------------------------------------------------- kernel


def _dense_reference(q, keys, masks, weights, radius, topk):
    """softmax_j(q.k/sqrt(d)) over the window positions of every memory frame, per head; top-k
    (ties kept), renormalised, mask sum; heads' soft masks combined by ``weights``."""
    heads, d, h, w = q.shape
    yy, xx = np.divmod(np.arange(h * w), w)
    inside = (np.abs(yy[:, None] - yy[None]) <= radius) & (np.abs(xx[:, None] - xx[None]) <= radius)
    inside = torch.from_numpy(np.concatenate([inside] * len(keys), axis=1))
    m_all = torch.from_numpy(np.concatenate([m.reshape(m.shape[0], -1).T for m in masks]).astype(np.float64))
    total = 0
    for head in range(heads):
        qh = torch.from_numpy(q[head].reshape(d, -1).T.astype(np.float64))
        kh = torch.cat([torch.from_numpy(k[head].reshape(d, -1).astype(np.float64)) for k in keys], dim=1)
        logits = (qh @ kh / math.sqrt(d)).masked_fill(~inside, -math.inf)
        a = torch.softmax(logits, dim=1)
        kth = torch.topk(a, topk, dim=1).values[:, -1:]
        a = torch.where(a >= kth, a, torch.zeros_like(a))
        a = a / a.sum(1, keepdim=True)
        total = total + weights[head] * (a @ m_all)
    return total.T.reshape(-1, h, w).numpy()


def test_attention_propagation_matches_the_dense_formula():
    rng = np.random.default_rng(0)
    heads, d, h, w, classes = 3, 4, 6, 7, 3
    config = PropagationConfig(topk=5, radius=2, memory=3, mag_filter="off", feature_dtype="float32")
    prop = AttentionPropagator(heads, d, h, w, classes, config)
    frames = [rng.normal(size=(2 * heads * d, h, w)).astype(np.float32) for _ in range(3)]
    first = rng.integers(0, classes, (h, w))
    onehot = np.eye(classes, dtype=np.float32)[first].transpose(2, 0, 1)
    prop.start(frames[0], onehot)
    keys, masks = [frames[0][heads * d:].reshape(heads, d, h, w)], [onehot]
    for f in frames[1:]:
        q = f[: heads * d].reshape(heads, d, h, w)
        ref = _dense_reference(q, keys, masks, prop.weights, 2, 5)
        got = prop.step(f)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        keys.append(f[heads * d:].reshape(heads, d, h, w))
        masks.append(got)


def test_adaptive_weighting_favours_the_head_that_reproduces_the_first_mask():
    """Head 0's queries and keys encode the object (same vector on it, another off it); head 1's
    are noise. Propagating the first frame onto itself, head 0 gets the mask right, head 1 not."""
    rng = np.random.default_rng(1)
    d, h, w = 4, 8, 8
    labels = np.zeros((h, w), int)
    labels[2:6, 2:6] = 1
    informative = np.where(labels[None] == 1, np.array([3.0, 0, 0, 0])[:, None, None],
                           np.array([0, 3.0, 0, 0])[:, None, None])
    noise_q, noise_k = rng.normal(size=(2, d, h, w)) * 3
    feats = np.concatenate([informative, noise_q, informative, noise_k]).astype(np.float32)
    onehot = np.eye(2, dtype=np.float32)[labels].transpose(2, 0, 1)
    config = PropagationConfig(topk=5, radius=3, mag_filter="off", head_weights="adaptive")
    prop = AttentionPropagator(2, d, h, w, 2, config)
    prop.start(feats, onehot)
    assert prop.head_scores[0] == pytest.approx(1.0)
    assert prop.head_scores[1] < 0.8
    assert prop.weights.sum() == pytest.approx(1.0) and prop.weights[0] > prop.weights[1]
    uniform = AttentionPropagator(2, d, h, w, 2, dataclasses.replace(config, head_weights="uniform"))
    uniform.start(feats, onehot)
    assert list(uniform.weights) == [0.5, 0.5]


def test_session_tracks_with_an_attention_bundle(attention_bundle):
    import diffvos
    from diffvos.sample_clip import moving_squares

    frames, masks = moving_squares(4)
    runtime = diffvos.Runtime(attention_bundle, backend="cpu")
    for weighting in ("uniform", "adaptive"):
        session = runtime.session(96, 64, color="RGB", head_weights=weighting)
        assert np.array_equal(session.step(frames[0], mask=masks[0]), masks[0])
        probs = np.empty(session.info.prob_shape, np.float32)
        for f in frames[1:]:
            out = session.step(f, probs=probs)
            assert out.shape == (64, 96) and set(np.unique(out)) <= {0, 1, 2}
            np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
        assert session.info.memory_bytes > 0
        assert session.propagator.weights.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- DDIM


def _torch_ddim_inversion(model, x0, alphas, taus):
    """The plain loop: eps from the full network at tau_{k-1}, DDIM step to tau_k; every x_k."""
    x, a_prev, out = x0.clone(), 1.0, []
    with torch.no_grad():
        for k in range(1, len(taus)):
            eps = model(x, torch.tensor([float(taus[k - 1])]))[:, :3]
            a = float(alphas[taus[k]])
            x = a**0.5 * (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5 + (1 - a) ** 0.5 * eps
            a_prev = a
            out.append(x.clone())
    return out


def test_ddim_inversion_matches_pytorch_step_by_step(attention_bundle, adm_fixture_dir):
    import diffvos
    from diffvos.runtime.ddim import DDIMInverter

    golden = np.load(adm_fixture_dir / "adm_tiny_golden.npz")
    runtime = diffvos.Runtime(attention_bundle, backend="cpu")
    m = runtime.manifest
    inverter = DDIMInverter(runtime.engines["noise_prediction"], m.ddim, m.timestep, 5)
    assert inverter.timesteps == [0, 6, 12, 18, 24, 30]
    steps = {}
    x_t = inverter(golden["x0"][0], observe=lambda k, x: steps.__setitem__(k, x.copy()))
    assert inverter.calls == 5 and sorted(steps) == [1, 2, 3, 4, 5]
    ref = _torch_ddim_inversion(_model(adm_fixture_dir), torch.from_numpy(golden["x0"]), golden["alphas_cumprod"],
                                inverter.timesteps)
    for k, r in enumerate(ref, 1):
        r = r.numpy()
        assert np.abs(steps[k] - r).max() / np.abs(r).max() <= 1e-4, k
    np.testing.assert_array_equal(x_t, steps[5])
    # x_t is on the scale of sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) eps, not the clean image
    assert 0.5 < np.std(x_t) / np.std(golden["x_t"]) < 2.0


def test_inversion_makes_features_deterministic_and_noise_free(attention_bundle):
    import diffvos

    rng = np.random.default_rng(2)
    frame = rng.integers(0, 255, (64, 96, 3), np.uint8)
    runtime = diffvos.Runtime(attention_bundle, backend="cpu")
    a = runtime.session(96, 64, inversion_steps=3, seed=1).features
    b = runtime.session(96, 64, inversion_steps=3, seed=2).features
    fa, fb = a(frame), b(frame)
    np.testing.assert_array_equal(fa, fb)  # the seed no longer matters
    assert a.inverter.calls == 3 and "inversion_ms" in a.timings
    noisy = runtime.session(96, 64, seed=1).features(frame)
    assert not np.allclose(noisy, fa)


def test_inversion_errors_name_the_problem(attention_bundle, adm_fixture_dir):
    from adm_bundle import tiny_adm_bundle

    import diffvos

    runtime = diffvos.Runtime(attention_bundle, backend="cpu")
    with pytest.raises(InputError, match="exceeds the bundle's time step t=30"):
        runtime.session(96, 64, inversion_steps=31)
    with pytest.raises(InputError, match="--noise-graph"):
        diffvos.Runtime(tiny_adm_bundle(adm_fixture_dir), backend="cpu").session(96, 64, inversion_steps=2)
    with pytest.raises(InputError, match="inversion_steps"):
        runtime.session(96, 64, inversion_steps=-1)
    assert inversion_timesteps(30, 30) == list(range(31))
