"""Preprocessing, noise injection and provider selection, checked against hand-computed cases."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from diffvos.runtime import providers
from diffvos.runtime.bundle import GraphEntry, Manifest, Preprocess
from diffvos.runtime.errors import InputError
from diffvos.runtime.noise import NoiseInjector
from diffvos.runtime.preprocess import input_size, method_size, to_model_input


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


class _FakeSession:
    def __init__(self, path, options, providers, provider_options):
        if providers[0] == "TensorrtExecutionProvider":
            raise RuntimeError("Please install TensorRT libraries")
        # like onnxruntime-gpu without a GPU: CUDA silently falls back
        self._providers = [p for p in providers if p != "CUDAExecutionProvider"]

    def get_providers(self):
        return self._providers


def _fake_ort(available):
    mod = types.SimpleNamespace(
        get_available_providers=lambda: available,
        set_default_logger_severity=lambda level: None,
        SessionOptions=lambda: types.SimpleNamespace(),
        GraphOptimizationLevel=types.SimpleNamespace(ORT_ENABLE_ALL=99),
        InferenceSession=_FakeSession,
    )
    return mod


def test_gpu_fallback_is_reported_in_one_line(monkeypatch, capsys):
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(gpu))
    monkeypatch.setattr(providers, "_announced", set())
    session, choice = providers.create_session("model.onnx", backend="auto")
    assert choice.active == "CPUExecutionProvider"
    assert "TensorrtExecutionProvider is not usable" in choice.note
    providers.announce(choice)
    providers.announce(choice)
    assert capsys.readouterr().err.count("not usable") == 1


def test_cpu_only_build_has_nothing_to_report(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(["CPUExecutionProvider"]))
    _, choice = providers.create_session("model.onnx", backend="auto")
    assert choice.active == "CPUExecutionProvider" and choice.note is None
    assert providers.candidate_chains("cuda", ["CPUExecutionProvider"]) == [["CPUExecutionProvider"]]
    with pytest.raises(ValueError, match="unknown backend"):
        providers.candidate_chains("metal", [])


def test_real_onnxruntime_reports_its_provider(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h

    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", 1, [1, 3])], [h.make_tensor_value_info("y", 1, [1, 3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "relu.onnx")
    session, choice = providers.create_session(tmp_path / "relu.onnx", backend="auto")
    assert choice.active == session.get_providers()[0]
    out = session.run(None, {"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})[0]
    np.testing.assert_array_equal(out, [[0.0, 0.0, 2.0]])
