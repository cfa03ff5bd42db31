"""Preprocessing, noise injection and provider selection, checked against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffvos.bundle import GraphEntry, Manifest, Preprocess
from diffvos.bundle.sizes import input_size, method_size
from diffvos.errors import BackendError, InputError
from diffvos.runtime.engine import Engine
from diffvos.runtime.noise import NoiseInjector
from diffvos.runtime.ort_engine import OrtLoader, candidate_chains
from diffvos.runtime.preprocess import to_model_input


def test_method_size_matches_method_md():
    assert method_size((480, 854), 480, 32) == (480, 832)
    assert method_size((854, 480), 480, 32) == (832, 480)
    assert method_size((1080, 1920), 480, 32) == (480, 832)  # 1920*480/1080 = 853.3 -> 832
    assert method_size((240, 427), 480, 32) == (480, 832)


def _manifest(dynamic=False):
    return Manifest(
        backbone="adm", timestep=30, alpha_bar=0.5, layer=6, stride=8, channels=4, ensemble=2,
        height=None if dynamic else 64, width=None if dynamic else 96, dynamic=dynamic,
        min_size=[64, 64] if dynamic else None, max_size=[512, 512] if dynamic else None,
        graphs={"features": GraphEntry("f.onnx", "0", {}, {})},
    )


def test_input_size_fixed_and_dynamic_range():
    assert input_size(_manifest(), (480, 854)) == (64, 96)
    m = _manifest(dynamic=True)
    m.preprocess = Preprocess(short_side=256, multiple=32)
    assert input_size(m, (480, 854)) == (256, 448)
    m.preprocess = Preprocess(short_side=480, multiple=32)
    with pytest.raises(InputError, match="dynamic range"):
        input_size(m, (480, 854))


def test_to_model_input_scales_and_swaps_channels():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    x = to_model_input(bgr, (2, 2), Preprocess())
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[2], 1.0)  # blue is the last RGB channel
    np.testing.assert_allclose(x[0], -1.0)
    p = Preprocess(scale=1 / 255, offset=0.0, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    np.testing.assert_allclose(to_model_input(bgr, (2, 2), p)[2], 2.0)
    # an RGB frame for an RGB graph is not flipped at all; for a BGR graph it is flipped once
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    np.testing.assert_array_equal(to_model_input(rgb, (2, 2), Preprocess(), color="RGB"), x)
    np.testing.assert_array_equal(to_model_input(rgb, (2, 2), Preprocess(color="BGR"), color="RGB"),
                                  to_model_input(bgr, (2, 2), Preprocess(color="BGR")))


def test_noise_formula_and_fixed_bank():
    x0 = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32)
    inj = NoiseInjector(alpha_bar=0.81, ensemble=2, shape=(3, 4, 5), seed=7)
    eps = np.random.default_rng(7).standard_normal((2, 3, 4, 5), dtype=np.float32)
    out = inj(x0).copy()
    np.testing.assert_allclose(out, 0.9 * x0[None] + math.sqrt(0.19) * eps, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(inj(x0), out)  # fixed bank: same noise every frame
    fresh = NoiseInjector(alpha_bar=0.81, ensemble=2, shape=(3, 4, 5), seed=7, fresh=True)
    first = fresh(x0).copy()
    assert not np.array_equal(fresh(x0), first)
    plain = NoiseInjector(alpha_bar=1.0, ensemble=1, shape=(3, 4, 5))
    np.testing.assert_array_equal(plain(x0)[0], x0)


def test_provider_chains():
    """Which chains are tried (the options and fallback detection: tests/test_ort_options.py)."""
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert candidate_chains("auto", gpu) == [gpu, gpu[1:], gpu[2:]]
    assert candidate_chains("cuda", ["CPUExecutionProvider"]) == [["CPUExecutionProvider"]]
    with pytest.raises(BackendError, match="metal"):
        candidate_chains("metal", [])


def test_real_onnxruntime_reports_its_provider(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h

    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", 1, [1, 3])], [h.make_tensor_value_info("y", 1, [1, 3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "relu.onnx")
    engine = OrtLoader(tmp_path / "relu.onnx", backend="auto")()
    assert isinstance(engine, Engine) and engine.provider == engine.providers[0]
    assert [m.name for m in engine.inputs] == ["x"] and engine.outputs[0].shape == (1, 3)
    seen = []
    with engine.observe(lambda feed, out: seen.append((feed["x"].copy(), out["y"].copy()))):
        out = engine.infer({"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})["y"]
    engine.infer({"x": np.zeros((1, 3), np.float32)})  # outside the block: not observed
    np.testing.assert_array_equal(out, [[0.0, 0.0, 2.0]])
    assert len(seen) == 1 and np.array_equal(seen[0][1], out)
