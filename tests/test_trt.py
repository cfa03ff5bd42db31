"""TensorRT engine building and the native ``trt`` backend, against small fakes of tensorrt and
pycuda (neither installs without a CUDA driver). The fake engine computes a real function
(8x8 average pool, mean over the ensemble) so the data path through the buffers is checked."""

from __future__ import annotations

import importlib.util
import json
import types

import numpy as np
import pytest

from diffvos.bundle import TensorRTPlan, read_manifest
from diffvos.calibration.engine_build import build_bundle_engine, profile_shapes
from diffvos.errors import BackendError, BundleError, ExportError, InputError
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.engine import Engine
from diffvos.runtime.session import Runtime
from diffvos.runtime.trt_engine import TrtEngine, TrtPlanLoader, check_plan_facts


# ---------------------------------------------------------------- fake pycuda.driver
class _DevPtr:
    _next = 4096

    def __init__(self, nbytes: int) -> None:
        self.buf = np.zeros(nbytes, np.uint8)
        self.addr = _DevPtr._next
        _DevPtr._next += nbytes + 256
        FakeCuda.memory[self.addr] = self

    def __int__(self) -> int:
        return self.addr


class FakeCuda(types.SimpleNamespace):
    memory: dict[int, _DevPtr] = {}
    allocations: list[int] = []

    def __init__(self, gpu="Orin", cc=(8, 7)):
        super().__init__()
        self.gpu, self.cc = gpu, cc
        self.allocations = []

    def init(self):
        pass

    def Device(self, i):  # noqa: N802 - pycuda's name
        return types.SimpleNamespace(name=lambda: self.gpu, compute_capability=lambda: self.cc,
                                     retain_primary_context=lambda: types.SimpleNamespace(push=lambda: None))

    def mem_alloc(self, n):
        self.allocations.append(n)
        return _DevPtr(n)

    def pagelocked_empty(self, n, dtype):
        return np.empty(n, dtype)

    def Stream(self):  # noqa: N802
        return types.SimpleNamespace(handle=7, synchronize=lambda: None)

    @staticmethod
    def memcpy_htod_async(dst, host, stream):
        raw = np.ascontiguousarray(host).view(np.uint8).ravel()
        dst.buf[: raw.size] = raw

    @staticmethod
    def memcpy_dtoh_async(host, src, stream):
        host.view(np.uint8).ravel()[:] = src.buf[: host.nbytes]


# ---------------------------------------------------------------- fake tensorrt
def _fake_trt(version="10.3.0", parse_ok=True):
    trt = types.SimpleNamespace(__version__=version, built=[])

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Engine:
        def __init__(self, spec):
            self.spec = spec
            self.num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x_t", "features"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "x_t" else "out"

        def get_tensor_dtype(self, name):
            return np.float32

        def get_tensor_shape(self, name):
            lo, _, hi = self.spec["profile"]
            if name == "x_t":
                return tuple(a if a == b else -1 for a, b in zip(lo, hi))
            return (1, 4, -1, -1)

        def get_tensor_profile_shape(self, name, index):
            assert index == 0
            return [tuple(s) for s in self.spec["profile"]]

        def create_execution_context(self):
            return Context()

    class Context:
        def __init__(self):
            self.shape = None
            self.addr = {}

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            e, c, h, w = self.shape
            return (e, c, h, w) if name == "x_t" else (1, 4, h // 8, w // 8)

        def set_tensor_address(self, name, addr):
            self.addr[name] = addr

        def execute_async_v3(self, stream):
            e, c, h, w = self.shape
            x = FakeCuda.memory[self.addr["x_t"]].buf[: e * c * h * w * 4].view(np.float32).reshape(self.shape)
            out = _reference(x)
            FakeCuda.memory[self.addr["features"]].buf[: out.nbytes] = out.view(np.uint8).ravel()
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            if not plan.startswith(b"PLAN"):
                return None
            return Engine(json.loads(plan[4:]))

    class Parser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            self.network.path = path
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported"

    class Config:
        def __init__(self):
            self.pool = {}
            self.builder_optimization_level = None
            self.profiles = []
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            self.pool[pool] = size

        def create_timing_cache(self, data):
            return types.SimpleNamespace(data=data, serialize=lambda: b"TIMING" + data[:0])

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, p):
            self.profiles.append(p)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return types.SimpleNamespace(flags=flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            prof = (config.profiles[0].shapes["x_t"] if config.profiles
                    else (trt.static_shape,) * 3)
            return b"PLAN" + json.dumps({"profile": [list(s) for s in prof]}).encode()

    trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = Logger, Runtime, Builder, Parser
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.nptype = lambda dt: dt
    return trt


def _reference(x: np.ndarray) -> np.ndarray:
    e, c, h, w = x.shape
    pooled = x.reshape(e, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5)).mean(axis=0)
    return np.concatenate([pooled, pooled[:1] * 2])[None].astype(np.float32)


def _plan(lo, opt, hi):
    return b"PLAN" + json.dumps({"profile": [lo, opt, hi]}).encode()


# ---------------------------------------------------------------- tests
def test_buffers_sized_once_at_profile_max_and_data_flows():
    cuda = FakeCuda()
    lo, hi = [2, 3, 64, 64], [2, 3, 256, 512]
    engine = TrtEngine(_plan(lo, [2, 3, 128, 128], hi), _fake_trt(), cuda)
    assert isinstance(engine, Engine) and engine.provider == "TensorRT (native)"
    assert sorted(cuda.allocations) == sorted([2 * 3 * 256 * 512 * 4, 1 * 4 * 32 * 64 * 4])
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 64, 96), (2, 3, 256, 512), (2, 3, 128, 64)]:
        x = rng.standard_normal(shape).astype(np.float32)
        out = engine.infer({"x_t": x})["features"]
        np.testing.assert_allclose(out, _reference(x), rtol=1e-6)
    assert len(cuda.allocations) == 2  # no allocation per frame
    assert engine.inputs[0].name == "x_t" and engine.outputs[0].name == "features"


def test_shape_outside_profile_is_refused():
    engine = TrtEngine(_plan([1, 3, 64, 64], [1, 3, 64, 64], [1, 3, 128, 128]), _fake_trt(), FakeCuda())
    with pytest.raises(InputError, match="outside the engine's profile"):
        engine.infer({"x_t": np.zeros((1, 3, 256, 64), np.float32)})
    with pytest.raises(InputError, match="engine input is 'x_t'"):
        engine.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})


def test_corrupt_plan_is_refused():
    with pytest.raises(BundleError, match="could not deserialise"):
        TrtEngine(b"garbage", _fake_trt(), FakeCuda(), source="b/features.plan")


def test_version_and_gpu_checks():
    facts = TensorRTPlan(plan="features.plan", sha256="", trt_version="10.3.0", gpu="Orin", compute_capability="8.7",
                         precision="fp32", profile={})
    check_plan_facts(facts, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"}, "b")
    with pytest.raises(BundleError, match=r"TensorRT 10\.3\.0, this machine has TensorRT 11\.0.*diffvos build-engine --bundle b"):
        check_plan_facts(facts, "11.0.1", {"gpu": "Orin", "compute_capability": "8.7"}, "b")
    with pytest.raises(BundleError, match=r"compute capability 8\.7\), this GPU is H100.*9\.0.*build-engine"):
        check_plan_facts(facts, "10.3.0", {"gpu": "H100", "compute_capability": "9.0"}, "b")
    with pytest.raises(BundleError, match="no TensorRT engine"):
        check_plan_facts(None, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"}, "b")


def test_profile_shapes_static_and_dynamic(tmp_path):
    static = read_manifest(make_toy_bundle(tmp_path / "s", ensemble=2, max_streams=1))
    assert profile_shapes(static, static.graphs["features"]) == ((2, 3, 64, 96),) * 3
    # a stream axis: 1 .. max_streams streams of E draws, optimised for opt_streams (default: the maximum)
    streamed = read_manifest(make_toy_bundle(tmp_path / "b", ensemble=2, max_streams=4))
    assert profile_shapes(streamed, streamed.graphs["features"]) == ((2, 3, 64, 96), (8, 3, 64, 96), (8, 3, 64, 96))
    assert profile_shapes(streamed, streamed.graphs["features"], opt_streams=2)[1] == (4, 3, 64, 96)
    dyn = read_manifest(make_toy_bundle(tmp_path / "d", height=None, width=None, max_streams=1))
    lo, opt, hi = profile_shapes(dyn, dyn.graphs["features"])
    assert lo == (1, 3, 8, 8) and hi == (1, 3, 2048, 2048)
    assert opt == (1, 3, 64, 112)  # 854x480 by the toy's rule: short side 64, multiple 8
    assert profile_shapes(dyn, dyn.graphs["features"], (4000, 16))[1] == (1, 3, 2048, 16)


def test_build_engine_then_run_through_the_runtime(tmp_path):
    # the fake engine computes a single-stream graph (_reference): a bundle without a stream axis
    bundle = make_toy_bundle(tmp_path / "d", height=None, width=None, ensemble=2, max_streams=1)
    trt, cuda = _fake_trt(), FakeCuda()
    cache = tmp_path / "timing.cache"
    facts = build_bundle_engine(bundle, workspace_gb=2, timing_cache=cache, opt_level=4, trt=trt, cuda=cuda,
                                log=lambda s: None)
    network, config = trt.built[0]
    assert network.flags == 1 << 5  # strongly typed: precision from the graph, no builder flags
    assert config.pool["workspace"] == 2 << 30 and config.builder_optimization_level == 4
    assert config.profiles[0].shapes["x_t"] == ((2, 3, 8, 8), (2, 3, 64, 112), (2, 3, 2048, 2048))
    assert cache.read_bytes() == b"TIMING"
    m = read_manifest(bundle)
    recorded = m.tensorrt["features"]
    assert recorded == facts and recorded.trt_version == "10.3.0"
    assert recorded.gpu == "Orin" and recorded.compute_capability == "8.7" and recorded.precision == "fp32"
    engine = TrtPlanLoader(bundle, m, trt=trt, cuda=cuda)()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 112)).astype(np.float32)
    np.testing.assert_allclose(engine.infer({"x_t": x})["features"], _reference(x), rtol=1e-6)
    # the same engine behind the Python API: a session tracks through it
    runtime = Runtime(bundle, backend="trt", loaders={"features": TrtPlanLoader(bundle, m, trt=trt, cuda=cuda)})
    assert runtime.provider == "TensorRT (native)"
    session = runtime.session(112, 64)
    mask = np.zeros((64, 112), np.uint8)
    mask[8:40, 8:40] = 1
    frame = np.zeros((64, 112, 3), np.uint8)
    assert session.step(frame, mask=mask).shape == (64, 112) and session.step(frame).shape == (64, 112)
    with pytest.raises(BundleError, match="TensorRT 10.3.0, this machine has TensorRT 10.8.0"):
        TrtPlanLoader(bundle, m, trt=_fake_trt("10.8.0"), cuda=cuda)()
    with pytest.raises(BundleError, match="this GPU is RTX"):
        TrtPlanLoader(bundle, m, trt=trt, cuda=FakeCuda("RTX", (8, 9)))()
    (bundle / "features.plan").write_bytes(b"PLANtampered")
    with pytest.raises(BundleError, match="corrupted"):
        TrtPlanLoader(bundle, m, trt=trt, cuda=cuda)()


def test_build_engine_reports_parser_errors(tmp_path):
    bundle = make_toy_bundle(tmp_path / "s")
    with pytest.raises(ExportError, match="In node 3 \\(Conv\\): unsupported"):
        build_bundle_engine(bundle, trt=_fake_trt(parse_ok=False), cuda=FakeCuda(), log=lambda s: None)
    assert read_manifest(bundle).tensorrt == {}


_HAS_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


@pytest.mark.skipif(_HAS_TRT, reason="TensorRT is importable here: the missing-package path cannot be shown")
def test_trt_backend_is_reachable_from_the_api_and_explains_what_is_missing(tmp_path):
    """Defect: runtime_create(backend="trt") was refused as an invalid argument although
    `diffvos track --backend trt` offers it. Now every caller reaches the native backend."""
    bundle = make_toy_bundle(tmp_path / "s")
    with pytest.raises(BackendError, match="needs the TensorRT Python package"):
        Runtime(bundle, backend="trt")


@pytest.mark.gpu
@pytest.mark.skipif(not _HAS_TRT, reason="TensorRT and pycuda are not importable here (no CUDA driver)")
def test_real_tensorrt_engine_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    bundle = make_toy_bundle(tmp_path / "toy", ensemble=2)
    build_bundle_engine(bundle, workspace_gb=1, log=lambda s: None)
    engine = Runtime(bundle, backend="trt").engines["features"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    ref = ort.InferenceSession(str(bundle / "features.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x_t": x})[0]
    np.testing.assert_allclose(engine.infer({"x_t": x})["features"], ref, atol=1e-3)
