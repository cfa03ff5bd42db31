"""ONNX Runtime provider options and fallback detection, on the CPU.

A fake ``onnxruntime`` module, injected into ``OrtLoader(ort=...)``, records the exact provider
options each session is created with and plays the GPU providers' failure modes the way
onnxruntime-gpu does (reported by an exception at creation, dropped silently at creation, or an
``EPFail`` at the first run, each with its cause printed by the native logger on descriptor 2).
The real CPU execution provider and this machine's real onnxruntime-gpu (which lists the GPU
providers but cannot load their libraries) check the same paths for real.
"""

from __future__ import annotations

import json
import os
import re
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffvos.bundle import read_manifest, write_manifest
from diffvos.config import RuntimeConfig
from diffvos.errors import BackendError
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.backends import gpu_options, loaders_for
from diffvos.runtime.caches import libnvinfer_version
from diffvos.runtime.cuda_device import Cuda
from diffvos.runtime.ort_engine import OrtLoader
from diffvos.runtime.ort_log import capture_native_output, first_line, provider_messages
from diffvos.runtime.ort_options import GpuOptions, provider_options
from tests.fake_cuda import FakeCudaRuntime

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_BUILD = [TRT, CUDA, CPU]


class EPFail(Exception):
    """ONNX Runtime's exception type for a failing execution provider (matched by name)."""


class InvalidArgument(Exception):
    pass


def _log(level: str, message: str) -> None:
    """What ONNX Runtime's native logger writes: straight to descriptor 2, in colour."""
    os.write(2, f"\x1b[1;31m2026-11-22 20:09:58.06 [{level}:onnxruntime:Default, provider_bridge_ort.cc:2430 "
                f"operator()] /onnxruntime_src/x.cc:2043 Get() [ONNXRuntimeError] : 1 : FAIL : {message}\x1b[m\n".encode())


class FakeOptions(types.SimpleNamespace):
    """``onnxruntime.SessionOptions``: attributes, and config entries recorded."""

    def add_session_config_entry(self, key, value):
        self.__dict__.setdefault("entries", {})[key] = value


class FakeOrt:
    """onnxruntime's module surface; ``behaviour`` maps a provider to ok | raise | drop | run_fail | run_bad."""

    __version__ = "1.31.1"
    GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL=99)

    def __init__(self, available=GPU_BUILD, **behaviour):
        self.available, self.behaviour = list(available), behaviour
        self.created: list[dict] = []
        self.options: list[FakeOptions] = []
        self.severity = None

    def get_available_providers(self):
        return self.available

    def set_default_logger_severity(self, level):
        self.severity = level

    def SessionOptions(self):  # noqa: N802 - onnxruntime's name
        options = FakeOptions()
        self.options.append(options)
        return options

    def InferenceSession(self, path, options, providers, provider_options, **kwargs):  # noqa: N802
        self.created.append({"providers": list(providers), "options": dict(zip(providers, provider_options)),
                             "kwargs": kwargs})
        first = providers[0]
        if self.behaviour.get(first) == "raise":
            _log("E", f"Failed to load library /opt/x/libonnxruntime_providers_{first[:4].lower()}.so with error: "
                      "libnvinfer.so.10: cannot open shared object file")
            raise RuntimeError("/onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:729 void "
                               "f(PySessionOptions&, const ProviderOptions&) Please install TensorRT libraries\n")
        kept = [p for p in providers if self.behaviour.get(p) != "drop"]
        for p in providers:
            if self.behaviour.get(p) == "drop":
                _log("E", "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: "
                          "cannot open shared object file")
        return FakeSession(self, kept)


class FakeSession:
    def __init__(self, ort, providers):
        self.ort, self.providers, self.fallback = ort, providers, True
        self.runs = 0

    def get_providers(self):
        return list(self.providers)

    def disable_fallback(self):
        self.fallback = False

    def get_inputs(self):
        return [types.SimpleNamespace(name="x", shape=[1, "n"], type="tensor(float)")]

    def get_outputs(self):
        return [types.SimpleNamespace(name="y", shape=[1, "n"], type="tensor(float)")]

    def run(self, names, feed):
        self.runs += 1
        what = self.ort.behaviour.get(self.providers[0])
        if what == "run_fail" and self.runs == 1:
            _log("E", "[TensorRT EP] ERROR: 4: [network.cpp::validate::3100] Error Code 4: int8 is not configured "
                      "in the builder")
            raise EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : TensorRT EP failed to create engine from network.")
        if what == "run_bad":
            raise InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x")
        if what == "switch" and self.runs == 1:
            self.providers = [CPU]
        return [np.maximum(feed["x"], 0)]


def _load(ort, backend="auto", gpu=None, tmp_path=None, **kw):
    gpu = gpu or GpuOptions(input_name="x", graph_sha256="ab" * 32,
                            cache_root=tmp_path / "cache" if tmp_path else None)
    return OrtLoader(Path("model.onnx"), backend=backend, gpu=gpu, ort=ort, cuda=Cuda(FakeCudaRuntime()),
                     nvinfer=lambda: "10.3.0", **kw)()


X = np.array([[-1.0, 0.5, 2.0]], np.float32)


# ---------------------------------------------------------------- the options per precision and shape
@pytest.mark.parametrize("precision, fp16, int8", [("fp32", "False", "False"), ("fp16", "True", "False"),
                                                    ("int8", "True", "True")])
def test_tensorrt_options_per_precision(precision, fp16, int8, tmp_path):
    gpu = GpuOptions(precision=precision, input_name="x_t", device=1, workspace_gb=2, opt_level=5)
    opts = provider_options(TRT, gpu, tmp_path)
    want = {
        "device_id": "1", "trt_fp16_enable": fp16, "trt_int8_enable": int8,
        "trt_builder_optimization_level": "5", "trt_max_workspace_size": str(2 << 30),
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path),
    }
    if precision == "int8":
        want["trt_int8_use_native_calibration_table"] = "False"  # Q/DQ scales are in the graph
    assert opts == want
    assert provider_options(CUDA, gpu) == {"device_id": "1"} and provider_options(CPU, gpu) == {}


def test_dynamic_bundle_gets_its_profile_and_static_gets_none(tmp_path):
    dyn = read_manifest(make_toy_bundle(tmp_path / "d", height=None, width=None, ensemble=2, max_streams=1))
    opts = provider_options(TRT, gpu_options(dyn, "features"), None)
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_opt_shapes"], opts["trt_profile_max_shapes"]) == \
        ("x_t:2x3x8x8", "x_t:2x3x64x112", "x_t:2x3x112x112")
    assert "trt_engine_cache_path" not in opts  # no cache folder given: no caching options
    static = read_manifest(make_toy_bundle(tmp_path / "s"))
    assert not any(k.startswith("trt_profile") for k in provider_options(TRT, gpu_options(static, "features"), None))
    int8 = replace(static, graphs={"features": replace(static.graphs["features"], precision="int8")})
    assert gpu_options(int8, "features").precision == "int8"


def test_loaders_pass_the_graph_facts_and_never_cache_in_the_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path / "user-cache"))
    bundle = make_toy_bundle(tmp_path / "d", height=None, width=None, max_streams=1)
    m = read_manifest(bundle)
    write_manifest(bundle, replace(m, graphs={"features": replace(m.graphs["features"], precision="fp16")}))
    m = read_manifest(bundle)
    (loader,) = loaders_for(bundle, m, RuntimeConfig(backend="auto")).values()
    ort = FakeOrt()
    engine = OrtLoader(loader.path, loader.backend, gpu=loader.gpu, ort=ort, cuda=Cuda(FakeCudaRuntime()),
                       nvinfer=lambda: "10.3.0")()
    assert engine.provider == TRT and engine.note is None
    opts = ort.created[0]["options"][TRT]
    assert opts["trt_fp16_enable"] == "True" and opts["trt_profile_max_shapes"] == "x_t:1x3x112x112"
    cache = Path(opts["trt_engine_cache_path"])
    assert cache.parent == tmp_path / "user-cache" / "trt" and not cache.is_relative_to(bundle)
    key = json.loads((cache / "key.json").read_text())
    assert key["graph_sha256"] == m.graphs["features"].sha256 and key["onnxruntime"] == "1.31.1"
    assert key["gpu"] == "Orin" and key["compute_capability"] == "8.7" and key["precision"] == "fp16"
    assert key["tensorrt"] == "10.3.0" and cache.name.startswith("Orin-trt10.3.0-")
    # another precision of the same graph: another engine, another folder
    other = OrtLoader(loader.path, gpu=replace(loader.gpu, precision="fp32"), ort=FakeOrt(),
                      cuda=Cuda(FakeCudaRuntime()), nvinfer=lambda: "10.3.0")()
    assert other.provider == TRT
    assert len(list((tmp_path / "user-cache" / "trt").iterdir())) == 2


def test_unwritable_cache_turns_caching_off_and_says_so(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ort = FakeOrt()
    engine = _load(ort, gpu=GpuOptions(input_name="x", cache_root=blocker))
    assert engine.provider == TRT and "trt_engine_cache_path" not in ort.created[0]["options"][TRT]
    assert "TensorRT engine cache off" in capsys.readouterr().err


# ---------------------------------------------------------------- fallback, with the real cause
def test_everything_starts_fallback_is_off_and_options_reach_each_provider(tmp_path):
    ort = FakeOrt()
    engine = _load(ort, tmp_path=tmp_path)
    assert engine.provider == TRT and engine.note is None and ort.severity == 3
    (made,) = ort.created
    assert made["providers"] == GPU_BUILD and made["kwargs"] == {"enable_fallback": 0}
    assert made["options"][CUDA] == {"device_id": "0"} and made["options"][CPU] == {}
    assert engine.session.fallback is False  # run-time fallback off too
    np.testing.assert_array_equal(engine.infer({"x": X})["y"], np.maximum(X, 0))


def test_provider_failing_at_creation_is_named_with_its_printed_cause(tmp_path):
    ort = FakeOrt(**{TRT: "raise"})
    engine = _load(ort, tmp_path=tmp_path)
    assert engine.provider == CUDA and [c["providers"] for c in ort.created] == [GPU_BUILD, [CUDA, CPU]]
    # information under 'auto' (nothing was asked for), with the real cause
    assert engine.note == ("note: running on CUDAExecutionProvider: TensorrtExecutionProvider cannot start here "
                           "(TensorRT EP: Failed to load library libonnxruntime_providers_tens.so with error: "
                           "libnvinfer.so.10: cannot open shared object file)")
    asked = _load(FakeOrt(**{TRT: "raise"}), backend="tensorrt", tmp_path=tmp_path)
    assert asked.note.startswith("warning: --backend tensorrt asked for TensorrtExecutionProvider, which is not "
                                 "usable here (TensorRT EP: Failed to load library")
    assert asked.note.endswith("running on CPUExecutionProvider")  # --backend tensorrt: TensorRT EP, then the CPU
    assert ort.created[1]["options"][CUDA] == {"device_id": "0"}  # the next chain keeps our options


def test_provider_dropped_silently_is_detected(tmp_path):
    ort = FakeOrt(**{TRT: "raise", CUDA: "drop"})
    engine = _load(ort, tmp_path=tmp_path)
    assert engine.provider == CPU
    assert "TensorRT EP: Failed to load library" in engine.note
    assert "CUDA EP: Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12" in engine.note
    assert "\n" not in engine.note and engine.note.startswith("note: running on CPUExecutionProvider")


def test_engine_build_failing_at_the_first_run_moves_on_with_the_cause(tmp_path):
    """A dynamic bundle's TensorRT engine is built at the first run; ONNX Runtime would retry on
    its fallback providers with default options and say nothing."""
    ort = FakeOrt(**{TRT: "run_fail"})
    engine = _load(ort, tmp_path=tmp_path)
    assert engine.provider == TRT and engine.note is None
    np.testing.assert_array_equal(engine.infer({"x": X})["y"], np.maximum(X, 0))
    assert engine.provider == CUDA and [c["providers"] for c in ort.created] == [GPU_BUILD, [CUDA, CPU]]
    assert "int8 is not configured in the builder" in engine.note and "TensorRT EP:" in engine.note
    engine.infer({"x": X})  # later runs: no more checks
    assert len(ort.created) == 2


def test_a_bad_input_at_the_first_run_is_not_a_provider_failure(tmp_path):
    ort = FakeOrt(**{TRT: "run_bad"})
    engine = _load(ort, tmp_path=tmp_path)
    with pytest.raises(BackendError, match="on TensorrtExecutionProvider: Got invalid dimensions for input: x"):
        engine.infer({"x": X})
    assert engine.provider == TRT and len(ort.created) == 1  # the provider is not demoted for a caller's mistake


def test_providers_are_read_again_after_the_first_run(tmp_path):
    ort = FakeOrt(**{CUDA: "switch"})
    engine = _load(ort, backend="cuda", tmp_path=tmp_path)
    assert engine.provider == CUDA
    engine.infer({"x": X})
    assert engine.provider == CPU and engine.note.startswith("diffvos: CUDAExecutionProvider stopped at the first run")


def test_no_chain_left_is_an_error_with_the_cause(tmp_path):
    ort = FakeOrt(available=[TRT, CPU], **{TRT: "run_fail", CPU: "run_fail"})
    engine = _load(ort, backend="tensorrt", tmp_path=tmp_path)
    assert engine.provider == TRT
    with pytest.raises(BackendError, match="failed to run the graph on CPUExecutionProvider"):
        engine.infer({"x": X})


def test_onnxruntime_gets_the_thread_plan():
    """--threads 0: the cores this process may use, no spinning; --threads 3: three threads."""
    from diffvos.runtime.threads import available_cores

    for threads, want in ((0, available_cores()), (3, 3)):
        ort = FakeOrt(available=[CPU])
        _load(ort, backend="cpu", threads=threads)
        assert ort.options[0].intra_op_num_threads == want
        assert ort.options[0].entries["session.intra_op.allow_spinning"] == "0"


def test_cpu_only_build_has_nothing_to_report():
    ort = FakeOrt(available=[CPU])
    engine = _load(ort)
    assert engine.provider == CPU and engine.note is None and ort.created[0]["options"] == {CPU: {}}


# ---------------------------------------------------------------- the log parsing
def test_onnxruntime_log_lines_are_shortened_and_other_output_is_kept(capfd):
    with capture_native_output() as said:
        _log("E", "Failed to load library /a/b/libonnxruntime_providers_cuda.so with error: libcudnn.so.9: missing")
        _log("W", "a warning")
        os.write(2, b"unrelated native line\n")
        print("a python print")
    assert provider_messages(said.text) == ["Failed to load library libonnxruntime_providers_cuda.so with error: "
                                            "libcudnn.so.9: missing"]
    assert provider_messages(said.text, "W") == ["a warning"]
    err = capfd.readouterr().err
    assert "unrelated native line" in err and "a python print" in err and "onnxruntime" not in err
    assert first_line(RuntimeError("/onnxruntime_src/a.cc:729 void f(A&, const B&) Please install TensorRT\nmore")) \
        == "Please install TensorRT"


# ---------------------------------------------------------------- the real onnxruntime here
def _relu_model(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h

    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", 1, [1, 3])],
                         [h.make_tensor_value_info("y", 1, [1, 3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_real_cpu_provider(tmp_path):
    engine = OrtLoader(_relu_model(tmp_path / "relu.onnx"), backend="cpu")()
    assert engine.provider == CPU and engine.note is None and engine.fork() is engine
    np.testing.assert_array_equal(engine.infer({"x": X})["y"], np.maximum(X, 0))


def test_real_gpu_build_without_gpu_names_the_real_cause(tmp_path, monkeypatch):
    """This machine's onnxruntime-gpu lists TensorRT and CUDA but cannot load their libraries: the
    note carries what ONNX Runtime printed (which library is missing), not a guess."""
    import onnxruntime as ort

    if TRT not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT EP (a CPU build)")
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path / "cache"))
    engine = OrtLoader(_relu_model(tmp_path / "relu.onnx"), backend="auto")()
    if libnvinfer_version() is None:  # the TensorRT EP cannot start: no engine cache folder was made for it
        assert not (tmp_path / "cache").exists()
    if engine.provider != CPU:
        pytest.skip(f"a GPU provider started here ({engine.provider})")
    assert engine.note.startswith("note: running on CPUExecutionProvider: TensorrtExecutionProvider cannot start "
                                  "here (TensorRT EP: ")
    assert re.search(r"TensorRT EP: [^;]*lib\S+\.so", engine.note)  # the real, printed cause: a library that is missing
    np.testing.assert_array_equal(engine.infer({"x": X})["y"], np.maximum(X, 0))
