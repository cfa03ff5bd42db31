"""TensorRT engine building and the native ``trt`` backend's data path, against fakes of tensorrt
and of cuda-python's runtime module (injected, as the real ones are imported on use). The fake
engine computes a real function (8x8 average pool, mean over the ensemble) through the device
addresses bound to its context, so buffers, copies, shapes and forks are checked for real. The
real TensorRT bindings are exercised in tests/test_trt_bindings.py."""

from __future__ import annotations

import enum
import json
import threading
import types
from dataclasses import replace

import numpy as np
import pytest

from diffvos.bundle import (
    GraphEntry,
    Latent,
    TensorRTPlan,
    read_manifest,
    write_manifest,
)
from diffvos.bundle.sizes import graph_input_shape, graph_profile, profile_sizes
from diffvos.calibration.engine_build import build_bundle_engines
from diffvos.errors import BackendError, BundleError, ExportError, InputError
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.cuda_device import Cuda, CudaError, CudaUnavailable
from diffvos.runtime.engine import Engine
from diffvos.runtime.session import Runtime
from diffvos.runtime.trt_engine import (
    TrtEngine,
    TrtPlan,
    TrtPlanLoader,
    check_plan_facts,
)
from tests.fake_cuda import FakeCudaRuntime


# ---------------------------------------------------------------- fake tensorrt
def _fake_trt(rt: FakeCudaRuntime, version: str = "10.3.0", parse_ok=True, fail_on: str | None = None):
    """``fail_on``: the ONNX file name whose parse fails (the others parse)."""
    trt = types.SimpleNamespace(__version__=version, built=[], contexts=[], deserialized=0)

    class LogSeverity(enum.IntEnum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        Severity = LogSeverity

        def __init__(self):
            pass

    class Logger(ILogger):
        WARNING = LogSeverity.WARNING

        def __init__(self, level=None):
            super().__init__()

    class Engine:
        device_memory_size_v2 = 12345

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
            ctx = Context()
            trt.contexts.append(ctx)
            return ctx

    class Context:
        def __init__(self):
            self.shape = None
            self.addr = {}
            self.threads = set()
            self.streams = set()

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            e, c, h, w = self.shape
            return (e, c, h, w) if name == "x_t" else (1, 4, h // 8, w // 8)

        def set_tensor_address(self, name, addr):
            assert isinstance(addr, int)
            self.addr[name] = addr

        def execute_async_v3(self, stream):
            assert isinstance(stream, int) and stream in rt.streams
            self.threads.add(threading.get_ident())
            self.streams.add(stream)
            e, c, h, w = self.shape
            x = rt.device_array(self.addr["x_t"], e * c * h * w * 4).view(np.float32).reshape(self.shape)
            out = _reference(x)
            rt.device_array(self.addr["features"], out.nbytes)[:] = out.view(np.uint8).ravel()
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            trt.deserialized += 1
            if not plan.startswith(b"PLAN"):
                return None
            return Engine(json.loads(plan[4:]))

    class Parser:
        def __init__(self, network, logger):
            self.network = network
            self.ok = True

        def parse_from_file(self, path):
            self.network.path = path
            self.ok = parse_ok and not (fail_on and path.endswith(fail_on))
            return self.ok

        @property
        def num_errors(self):
            return 0 if self.ok else 1

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
            prof = config.profiles[0].shapes if config.profiles else {"static": (trt.static_shape,) * 3}
            (shapes,) = prof.values()
            return b"PLAN" + json.dumps({"profile": [list(s) for s in shapes], "onnx": network.path}).encode()

    trt.ILogger, trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = ILogger, Logger, Runtime, Builder, Parser
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.nptype = lambda dt: dt
    trt.static_shape = [1, 3, 64, 96]
    return trt


def _reference(x: np.ndarray) -> np.ndarray:
    e, c, h, w = x.shape
    pooled = x.reshape(e, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5)).mean(axis=0)
    return np.concatenate([pooled, pooled[:1] * 2])[None].astype(np.float32)


def _plan(lo, opt, hi):
    return b"PLAN" + json.dumps({"profile": [lo, opt, hi]}).encode()


def _engine(lo=(2, 3, 64, 64), opt=(2, 3, 128, 128), hi=(2, 3, 256, 512), rt=None):
    rt = rt or FakeCudaRuntime()
    trt = _fake_trt(rt)
    return TrtEngine(TrtPlan(_plan(list(lo), list(opt), list(hi)), trt, Cuda(rt))), trt, rt


# ---------------------------------------------------------------- the data path
def test_buffers_sized_once_at_profile_max_bound_by_address_and_data_flows():
    engine, trt, rt = _engine()
    assert isinstance(engine, Engine) and engine.provider == "TensorRT (native)"
    assert rt.memory == {} and trt.contexts == []  # nothing on the device before the first infer
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 64, 96), (2, 3, 256, 512), (2, 3, 128, 64)]:
        x = rng.standard_normal(shape).astype(np.float32)
        out = engine.infer({"x_t": x})["features"]
        np.testing.assert_allclose(out, _reference(x), rtol=1e-6)
    assert sorted(b.nbytes for b in rt.memory.values()) == sorted([1 * 4 * 32 * 64 * 4, 2 * 3 * 256 * 512 * 4])
    (ctx,) = trt.contexts
    assert sorted(ctx.addr.values()) == sorted(rt.memory)  # bound once, to the allocations
    assert engine.device_memory_bytes == 12345 + 2 * 3 * 256 * 512 * 4 + 4 * 32 * 64 * 4
    assert [f for f in rt.streams.values()] == [rt.cudaStreamNonBlocking]
    assert engine.inputs[0].name == "x_t" and engine.outputs[0].shape == (1, 4, "?", "?")


def test_outputs_are_views_of_the_pinned_buffer_valid_until_the_next_infer():
    engine, _, rt = _engine()
    a = np.ones((2, 3, 64, 64), np.float32)
    first = engine.infer({"x_t": a})["features"]
    kept = first.copy()
    second = engine.infer({"x_t": a * 3})["features"]
    assert np.shares_memory(first, second)  # the same pinned memory: no per-call output copy
    np.testing.assert_allclose(second, _reference(a * 3))
    assert not np.array_equal(first, kept)  # the earlier view now shows the new result (documented)
    assert rt.copies == {"htod": 2 * a.nbytes, "dtoh": 2 * second.nbytes}  # bytes moved: input up, output down


def test_forks_share_the_engine_and_run_concurrently_on_their_own_contexts():
    engine, trt, rt = _engine()
    forks = [engine.fork() for _ in range(3)]
    assert all(f.plan is engine.plan for f in forks) and trt.deserialized == 1
    errors: list[str] = []

    def work(eng, seed):
        rng = np.random.default_rng(seed)
        for _ in range(25):
            shape = (2, 3, 8 * int(rng.integers(8, 33)), 8 * int(rng.integers(8, 65)))
            x = rng.standard_normal(shape).astype(np.float32)
            got = eng.infer({"x_t": x})["features"]
            if not np.allclose(got, _reference(x), rtol=1e-5, atol=1e-6):
                errors.append(f"fork {seed}: wrong result for {shape}")

    threads = [threading.Thread(target=work, args=(e, i)) for i, e in enumerate([engine, *forks])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(trt.contexts) == 4 and len({s for c in trt.contexts for s in c.streams}) == 4
    assert all(len(c.threads) == 1 for c in trt.contexts)  # each context used by its own thread only
    ran = {tid for c in trt.contexts for tid in c.threads}
    assert ran <= set(rt.set_device)  # every thread made the device current itself (primary context, no push)
    for f in forks:
        f.close()
    assert len(rt.destroyed) == 3 and len(rt.memory) == 2  # the forks' streams and buffers are gone, the first's stay


def test_shape_outside_profile_and_wrong_input_are_refused():
    engine, _, _ = _engine((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 128, 128))
    with pytest.raises(InputError, match=r"outside the engine's profile.*--max-size"):
        engine.infer({"x_t": np.zeros((1, 3, 256, 64), np.float32)})
    with pytest.raises(InputError, match="engine input is 'x_t'"):
        engine.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})


def test_out_of_device_memory_is_a_cuda_error_and_frees_what_was_taken():
    rt = FakeCudaRuntime()
    engine, _, _ = _engine(rt=rt)
    rt.fail_malloc = True
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation.*out of memory"):
        engine.infer({"x_t": np.zeros((2, 3, 64, 64), np.float32)})
    assert rt.memory == {} and rt.streams == {}


def test_corrupt_plan_is_refused():
    rt = FakeCudaRuntime()
    with pytest.raises(BundleError, match="could not deserialise"):
        TrtPlan(b"garbage", _fake_trt(rt), Cuda(rt), source="b/features.plan")


def test_version_and_gpu_checks():
    facts = TensorRTPlan(plan="features.plan", sha256="", trt_version="10.3.0", gpu="Orin", compute_capability="8.7",
                         precision="fp32", profile={})
    check_plan_facts(facts, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"}, "b")
    with pytest.raises(BundleError, match=r"TensorRT 10\.3\.0, this machine has TensorRT 11\.0.*diffvos build-engine --bundle b"):
        check_plan_facts(facts, "11.0.1", {"gpu": "Orin", "compute_capability": "8.7"}, "b")
    with pytest.raises(BundleError, match=r"compute capability 8\.7\), this GPU is H100.*9\.0.*build-engine"):
        check_plan_facts(facts, "10.3.0", {"gpu": "H100", "compute_capability": "9.0"}, "b")
    with pytest.raises(BundleError, match="no TensorRT engine for graph 'vae_encoder'"):
        check_plan_facts(None, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"}, "b", "vae_encoder")


# ---------------------------------------------------------------- profiles (the size rule)
def test_profile_sizes_static_and_dynamic(tmp_path):
    static = read_manifest(make_toy_bundle(tmp_path / "s", ensemble=2, max_streams=1))
    assert graph_profile(static, "features") == ((2, 3, 64, 96),) * 3
    dyn = read_manifest(make_toy_bundle(tmp_path / "d", height=None, width=None, max_streams=1))
    # the toy's rule: short side 64, multiple 8 -> a 854x480 frame runs at 64x112; its range is 8..2048
    lo, opt, hi = profile_sizes(dyn)
    assert (lo, opt, hi) == ((8, 8), (64, 112), (112, 112))  # default max: both 16:9 orientations, not 2048
    assert graph_profile(dyn, "features", max_hw=(256, 512)) == ((1, 3, 8, 8), (1, 3, 64, 112), (1, 3, 256, 512))
    assert profile_sizes(dyn, max_hw=(32, 48))[1:] == ((32, 48), (32, 48))  # the default optimum never exceeds it
    assert profile_sizes(dyn, opt_hw=(4000, 16))[1] == (2048, 16)  # an optimum is clamped into the range
    with pytest.raises(InputError, match=r"--max-size 4096x64 is outside the bundle's range 8x8 \.\. 2048x2048"):
        profile_sizes(dyn, max_hw=(4096, 64))
    with pytest.raises(InputError, match=r"--opt-size 64x112 is larger than --max-size 32x32"):
        profile_sizes(dyn, opt_hw=(64, 112), max_hw=(32, 32))


def test_stream_axis_profiles(tmp_path):
    """A feature graph with a stream axis: 1 .. max_streams streams of E draws, optimised for
    opt_streams (default: the manifest's)."""
    streamed = read_manifest(make_toy_bundle(tmp_path / "b", ensemble=2, max_streams=4))
    assert graph_profile(streamed, "features") == ((2, 3, 64, 96), (8, 3, 64, 96), (8, 3, 64, 96))
    assert graph_profile(streamed, "features", opt_streams=2)[1] == (4, 3, 64, 96)
    assert graph_profile(streamed, "features", opt_streams=9)[1] == (8, 3, 64, 96)  # clamped to the maximum


def _sd_like_bundle(path, dynamic=True):
    """A two-graph bundle shaped like Stable Diffusion's (VAE on pixels, U-Net on latents 8x smaller);
    both entries use the toy graph file (the fake TensorRT does not read it)."""
    bundle = make_toy_bundle(path, height=None if dynamic else 64, width=None if dynamic else 96, ensemble=2, max_streams=1)
    m = read_manifest(bundle)
    f = m.graphs["features"]
    h, w = ("height", "width") if dynamic else (64, 96)
    vae = GraphEntry(f.file, f.sha256, {"image": [1, 3, h, w]}, {"latent": [1, 4, "lh", "lw"]})
    lh, lw = ("height", "width") if dynamic else (8, 12)
    feats = replace(f, inputs={"x_t": [2, 4, lh, lw]})
    write_manifest(bundle, replace(m, graphs={"vae_encoder": vae, "features": feats},
                                   latent=Latent(scaling_factor=0.18, downsample=8, channels=4)))
    return bundle


def test_graph_shapes_follow_each_graph(tmp_path):
    dyn = read_manifest(_sd_like_bundle(tmp_path / "d"))
    assert graph_input_shape(dyn, "vae_encoder", (480, 832)) == (1, 3, 480, 832)
    assert graph_input_shape(dyn, "features", (480, 832)) == (2, 4, 60, 104)  # latent: /8
    static = read_manifest(_sd_like_bundle(tmp_path / "s", dynamic=False))
    assert graph_profile(static, "features") == ((2, 4, 8, 12),) * 3  # the graph's own dims, not the pixel size
    assert graph_profile(static, "vae_encoder") == ((1, 3, 64, 96),) * 3


# ---------------------------------------------------------------- build-engine
def test_build_engine_builds_every_graph_then_the_runtime_runs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path / "cache"))
    bundle = _sd_like_bundle(tmp_path / "sd")
    rt = FakeCudaRuntime()
    trt = _fake_trt(rt)
    facts = build_bundle_engines(bundle, workspace_gb=2, opt_level=4, max_hw=(128, 256), trt=trt, cuda=Cuda(rt),
                                 log=lambda s: None)
    assert list(facts) == ["vae_encoder", "features"]
    (vae_net, vae_cfg), (net, cfg) = trt.built
    assert vae_cfg.profiles[0].shapes["image"] == ((1, 3, 8, 8), (1, 3, 64, 112), (1, 3, 128, 256))
    assert cfg.profiles[0].shapes["x_t"] == ((2, 4, 1, 1), (2, 4, 8, 14), (2, 4, 16, 32))
    assert net.flags == 1 << 5  # strongly typed: precision from the graph, no builder flags
    assert cfg.pool["workspace"] == 2 << 30 and cfg.builder_optimization_level == 4
    timing = tmp_path / "cache" / "trt" / "timing-Orin-sm8.7-trt10.3.0.cache"
    assert timing.read_bytes() == b"TIMING"  # one timing cache per GPU and TensorRT version, in the user cache
    m = read_manifest(bundle)
    assert m.tensorrt == facts and facts["features"].profile["max"] == [2, 4, 16, 32]
    assert facts["vae_encoder"].gpu == "Orin" and facts["vae_encoder"].compute_capability == "8.7"
    for graph in ("vae_encoder", "features"):  # each graph's plan loads (before: the VAE's was never built)
        assert TrtPlanLoader(bundle, m, graph, trt=trt, cuda=Cuda(rt))().provider == "TensorRT (native)"


def test_build_engine_writes_nothing_unless_every_graph_builds(tmp_path):
    bundle = _sd_like_bundle(tmp_path / "sd", dynamic=False)
    rt = FakeCudaRuntime()
    before = sorted(p.name for p in bundle.iterdir())
    with pytest.raises(ExportError, match="In node 3 \\(Conv\\): unsupported"):
        build_bundle_engines(bundle, timing_cache=tmp_path / "t.cache", trt=_fake_trt(rt, fail_on="features.onnx"),
                             cuda=Cuda(rt), graphs=["vae_encoder", "features"], log=lambda s: None)
    assert sorted(p.name for p in bundle.iterdir()) == before and read_manifest(bundle).tensorrt == {}
    with pytest.raises(BundleError, match="no graph 'unet'"):
        build_bundle_engines(bundle, graphs=["unet"], trt=_fake_trt(rt), cuda=Cuda(rt), log=lambda s: None)


def test_trt_backend_through_the_runtime_one_context_per_session(tmp_path):
    bundle = make_toy_bundle(tmp_path / "d", height=None, width=None, ensemble=2, max_streams=1)
    rt = FakeCudaRuntime()
    trt = _fake_trt(rt)
    build_bundle_engines(bundle, timing_cache=tmp_path / "t", trt=trt, cuda=Cuda(rt), log=lambda s: None)
    m = read_manifest(bundle)
    runtime = Runtime(bundle, backend="trt", loaders={"features": TrtPlanLoader(bundle, m, trt=trt, cuda=Cuda(rt))})
    assert runtime.provider == "TensorRT (native)" and trt.contexts == []
    mask = np.zeros((64, 112), np.uint8)
    mask[8:40, 8:40] = 1
    frame = np.zeros((64, 112, 3), np.uint8)
    sessions = [runtime.session(112, 64) for _ in range(2)]
    for s in sessions:
        assert s.step(frame, mask=mask).shape == (64, 112) and s.step(frame).shape == (64, 112)
    assert len(trt.contexts) == 2  # a context per session; the runtime's own engine never ran
    for s in sessions:
        s.close()
    assert rt.memory == {} and rt.streams == {}
    with pytest.raises(BundleError, match="TensorRT 10.3.0, this machine has TensorRT 10.8.0"):
        TrtPlanLoader(bundle, m, trt=_fake_trt(rt, "10.8.0"), cuda=Cuda(rt))()
    with pytest.raises(BundleError, match="this GPU is RTX"):
        TrtPlanLoader(bundle, m, trt=trt, cuda=Cuda(FakeCudaRuntime("RTX", (8, 9))))()
    (bundle / "features.plan").write_bytes(b"PLANtampered")
    with pytest.raises(BundleError, match="corrupted"):
        TrtPlanLoader(bundle, m, trt=trt, cuda=Cuda(rt))()


def test_build_engine_reports_parser_errors(tmp_path):
    bundle = make_toy_bundle(tmp_path / "s", max_streams=1)
    rt = FakeCudaRuntime()
    with pytest.raises(ExportError, match="In node 3 \\(Conv\\): unsupported"):
        build_bundle_engines(bundle, timing_cache=tmp_path / "t", trt=_fake_trt(rt, parse_ok=False), cuda=Cuda(rt),
                             log=lambda s: None)
    assert read_manifest(bundle).tensorrt == {}


# ---------------------------------------------------------------- no GPU
@pytest.mark.parametrize("shape", ["returns", "raises"])  # cuda-bindings >= 12.9 / cuda-python 12.6
def test_no_driver_is_a_clear_backend_error(tmp_path, shape):
    bundle = make_toy_bundle(tmp_path / "s", max_streams=1)
    rt = FakeCudaRuntime(no_driver=shape)
    with pytest.raises(CudaUnavailable, match=r"no usable CUDA GPU \(cudaGetDeviceCount failed.*nvidia-smi") as info:
        build_bundle_engines(bundle, trt=_fake_trt(rt), cuda=Cuda(rt), log=lambda s: None)
    assert isinstance(info.value, BackendError)
    want = "cudaErrorInsufficientDriver \\(35\\): CUDA driver version is insufficient" if shape == "returns" \
        else "NoDriver .*cuInit"
    with pytest.raises(BackendError, match=want):
        TrtPlanLoader(bundle, read_manifest(bundle), trt=_fake_trt(rt), cuda=Cuda(rt))()


def test_trt_backend_without_tensorrt_says_what_to_install(tmp_path):
    """Every caller reaches the native backend (the API, the CLI, the C ABI) and learns what is
    missing. Here the bindings may be installed as ``tensorrt_bindings``, never as ``tensorrt``."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("a TensorRT package is importable here: the missing-package path cannot be shown")
    bundle = make_toy_bundle(tmp_path / "s", max_streams=1)
    with pytest.raises(BackendError, match="needs TensorRT's Python package.*diffvos\\[trt-cu12\\]|needs TensorRT"):
        Runtime(bundle, backend="trt")


@pytest.mark.gpu
def test_real_tensorrt_engine_matches_onnxruntime(tmp_path):
    """On a GPU with TensorRT: build-engine, then the native backend equals the CPU EP."""
    pytest.importorskip("tensorrt")
    import onnxruntime as ort

    bundle = make_toy_bundle(tmp_path / "toy", ensemble=2, max_streams=1)
    build_bundle_engines(bundle, workspace_gb=1, timing_cache=tmp_path / "t.cache", log=lambda s: None)
    runtime = Runtime(bundle, backend="trt")
    engines = [runtime.engines["features"], runtime.engines["features"].fork()]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    ref = ort.InferenceSession(str(bundle / "features.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x_t": x})[0]
    for engine in engines:
        np.testing.assert_allclose(engine.infer({"x_t": x})["features"], ref, atol=1e-3)
        engine.close()


def test_build_engine_command_line_sizes(tmp_path, capsys):
    from diffvos.cli import build_parser, main

    args = build_parser().parse_args(["build-engine", "--bundle", "b", "--opt-size", "480x832", "--max-size", "832x832",
                                      "--graph", "features", "--graph", "vae_encoder"])
    assert (args.opt_size, args.max_size, args.graphs, args.workspace, args.opt_level) == \
        ("480x832", "832x832", ["features", "vae_encoder"], 4.0, 3)
    bundle = make_toy_bundle(tmp_path / "d", height=None, width=None, max_streams=1)
    assert main(["build-engine", "--bundle", str(bundle), "--max-size", "big"]) == 1
    assert "--max-size must be HxW (e.g. 480x832), got 'big'" in capsys.readouterr().err
    assert main(["build-engine", "--bundle", str(bundle), "--max-size", "4096x4096"]) == 1
    assert "--max-size 4096x4096 is outside the bundle's range 8x8 .. 2048x2048" in capsys.readouterr().err
