"""diffvos against the *real* TensorRT Python bindings on a machine without a GPU.

PyPI's ``tensorrt-cu12-bindings`` wheels (about 1 MB) hold the real pybind11 module; it imports
once libnvinfer's few factory symbols resolve, and ``tests/trt_stub.py`` builds stand-in libraries
whose factories fail the way real libnvinfer fails when CUDA cannot start (log through the
caller's logger, return NULL). So these tests check, against TensorRT 10.3 (JetPack 6; the ``dev``
extra installs it) in this process and 11.x in a subprocess (one bindings version per process):

* every TensorRT attribute diffvos' code touches exists (found by reading the code, so the list
  cannot go stale);
* the no-GPU path: ``build-engine`` and the ``trt`` backend raise a BackendError carrying what
  TensorRT logged and what to check, not pybind11's bare ``TypeError``;
* diffvos' logger subclass receives TensorRT's messages (the ILogger vtable changed in 11).

Skipped, with the reason, when the bindings, gcc or readelf are missing, or when a real
libnvinfer is installed (then the stand-ins are not what runs).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffvos.bundle import TensorRTPlan, read_manifest, write_manifest
from diffvos.calibration.engine_build import build_bundle_engines
from diffvos.errors import BackendError
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.cuda_device import Cuda
from diffvos.runtime.trt_api import create, make_logger
from diffvos.runtime.trt_engine import TrtPlanLoader
from tests.fake_cuda import FakeCudaRuntime

ROOT = Path(__file__).resolve().parents[1]
# the other TensorRT major's bindings, installed apart (``pip install --target``; .ci/run does it)
OTHER_BINDINGS = Path(os.environ.get("DIFFVOS_TRT_OTHER_BINDINGS", ROOT / ".venv" / "trt-bindings-other"))
OTHER_INSTALL = f"pip install --no-deps --target {OTHER_BINDINGS} tensorrt-cu12-bindings==11.4.0.106"
CODE = [ROOT / "diffvos" / "runtime" / "trt_engine.py", ROOT / "diffvos" / "runtime" / "trt_api.py",
        ROOT / "diffvos" / "calibration" / "engine_build.py"]
NO_GPU_MESSAGE = "CUDA initialization failure with error: 35. Please check your CUDA installation"

_missing = [what for what, ok in (
    ("the tensorrt-cu12-bindings wheel (pip install -e '.[dev]')", importlib.util.find_spec("tensorrt_bindings")),
    ("gcc", shutil.which("gcc")), ("readelf (binutils)", shutil.which("readelf"))) if not ok]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)}")


@pytest.fixture(scope="session")
def stub(tmp_path_factory):
    import tests.trt_stub as trt_stub

    info = trt_stub.load_stub_tensorrt(tmp_path_factory.mktemp("trtstub"))
    if not info.libs:
        pytest.skip("a real libnvinfer is installed here: the stand-ins were not needed")
    state = trt_stub.StubState(info)
    state.set_message(NO_GPU_MESSAGE + ": http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html")
    return info


@pytest.fixture
def trt(stub, monkeypatch):
    """The real bindings as ``tensorrt``, for this test only (as the tensorrt-cuXX front package names them)."""
    monkeypatch.setitem(sys.modules, "tensorrt", stub.module)
    return stub.module


def test_the_expected_bindings_version(trt):
    want = os.environ.get("DIFFVOS_EXPECT_TRT_VERSION")
    assert trt.__version__ == (want or trt.__version__)
    assert int(trt.__version__.split(".")[0]) in (10, 11)


# ---------------------------------------------------------------- the API surface diffvos uses
RECEIVERS = {  # variable / attribute names in diffvos' TensorRT code -> the TensorRT class they hold
    "trt": "", "engine": "ICudaEngine", "context": "IExecutionContext", "_context": "IExecutionContext",
    "builder": "Builder", "config": "IBuilderConfig", "parser": "OnnxParser", "profile": "IOptimizationProfile",
    "runtime": "Runtime", "severity": "ILogger.Severity",
}
# reached through a call's result or getattr(), which the scan does not follow
ALSO_USED = ["ITimingCache.serialize", "IBuilderConfig.get_timing_cache", "ILogger.Severity.ERROR", "Builder",
             "Runtime"]


def used_attributes() -> set[str]:
    """``Class.attr`` for every attribute diffvos' TensorRT code reads from a TensorRT object."""
    found: set[str] = set()
    for path in CODE:
        tree = ast.parse(path.read_text())
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.insert(0, cur.attr)
                cur = cur.value
            if not isinstance(cur, ast.Name):
                continue
            parts.insert(0, cur.id)
            for i, part in enumerate(parts[:-1]):
                if part in RECEIVERS:
                    found.add(".".join(p for p in [RECEIVERS[part], *parts[i + 1:]] if p))
                    break
    return found | set(ALSO_USED)


def test_the_scan_finds_the_api_the_code_uses():
    used = used_attributes()
    for name in ("ICudaEngine.create_execution_context", "IExecutionContext.execute_async_v3",
                 "IExecutionContext.set_tensor_address", "Builder.build_serialized_network",
                 "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "ILogger.Severity", "Runtime.deserialize_cuda_engine",
                 "IBuilderConfig.builder_optimization_level", "IOptimizationProfile.set_shape"):
        assert name in used
    assert len(used) >= 30


def test_every_attribute_diffvos_uses_exists(trt):
    missing = []
    for name in sorted(used_attributes()):
        obj = trt
        for part in name.split("."):
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    assert missing == [], f"TensorRT {trt.__version__} lacks {missing}"
    assert hasattr(trt.ICudaEngine, "device_memory_size_v2")  # engine_device_memory's first choice (11 has only it)


def test_strongly_typed_flag_bit(trt):
    major = int(trt.__version__.split(".")[0])
    assert 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == (2 if major == 10 else 1)
    assert np.dtype(trt.nptype(trt.float16)) == np.float16 and np.dtype(trt.nptype(trt.float32)) == np.float32


# ---------------------------------------------------------------- no GPU
@pytest.mark.parametrize("what", ["Builder", "Runtime"])
def test_no_gpu_factory_error_names_the_cause(trt, stub, what):
    import tests.trt_stub as trt_stub

    logger = make_logger(trt, echo="")
    with pytest.raises(BackendError, match=rf"TensorRT {trt.__version__} could not create its {what}: no usable CUDA "
                       r"GPU \(CUDA initialization failure with error: 35.*: the NVIDIA driver is missing.*nvidia-smi"):
        create(trt, what, logger)
    assert logger.messages and logger.messages[-1].startswith(NO_GPU_MESSAGE)  # our ILogger got TensorRT's message
    assert trt_stub.StubState(stub).last_factory == f"createInfer{what}_INTERNAL"


def test_bare_bindings_error_is_what_create_replaces(trt):
    with pytest.raises(TypeError, match="factory function returned nullptr"):
        trt.Builder(make_logger(trt, echo=""))


def test_build_engine_without_gpu(trt, tmp_path, capsys):
    bundle = make_toy_bundle(tmp_path / "b")
    with pytest.raises(BackendError, match="could not create its Builder: no usable CUDA GPU"):
        build_bundle_engines(bundle, timing_cache=tmp_path / "t", trt=trt, cuda=Cuda(FakeCudaRuntime()),
                             log=lambda s: None)
    assert read_manifest(bundle).tensorrt == {}


def test_trt_backend_without_gpu(trt, tmp_path):
    bundle = make_toy_bundle(tmp_path / "b")
    (bundle / "features.plan").write_bytes(b"plan")
    m = read_manifest(bundle)
    m.tensorrt["features"] = TensorRTPlan(plan="features.plan", sha256="", trt_version=trt.__version__, gpu="Orin",
                                          compute_capability="8.7", precision="fp32", profile={})
    write_manifest(bundle, m)
    with pytest.raises(BackendError, match="could not create its Runtime: no usable CUDA GPU"):
        TrtPlanLoader(bundle, read_manifest(bundle), trt=trt, cuda=Cuda(FakeCudaRuntime()))()


def test_build_engine_command_without_gpu(trt, tmp_path, capsys):
    """The whole command on this machine: real bindings, real cuda-python (when installed), no driver."""
    from diffvos.cli import main

    bundle = make_toy_bundle(tmp_path / "b")
    assert main(["build-engine", "--bundle", str(bundle)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffvos build-engine: error:") and "no usable CUDA GPU" in err and "\n" not in err
    assert "Traceback" not in err and "nullptr" not in err


# ---------------------------------------------------------------- the other TensorRT major
def test_the_other_tensorrt_major_in_a_subprocess(stub):
    """One bindings version per process: the tests above run again in a child against the other
    major (10.3 here -> 11.4 there, or the reverse)."""
    if not (OTHER_BINDINGS / "tensorrt_bindings").is_dir():
        pytest.skip(f"the other TensorRT bindings are not installed: {OTHER_INSTALL}")
    if os.environ.get("DIFFVOS_EXPECT_TRT_VERSION"):
        pytest.skip("already the child")
    import tests.trt_stub as trt_stub

    other = trt_stub.bindings_version(trt_stub.find_bindings_in(OTHER_BINDINGS))
    assert other.split(".")[0] != stub.version.split(".")[0], "install the other major, not the same one"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OTHER_BINDINGS), str(ROOT)]),
           "DIFFVOS_EXPECT_TRT_VERSION": other}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(Path(__file__)), "-k", "not other_tensorrt_major"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout.splitlines()[-1], child.stdout[-1000:]


def test_doctor_with_the_real_bindings(trt):
    """``import tensorrt`` works (the bindings), but TensorRT cannot start: the doctor says why."""
    from diffvos.runtime.doctor import Probes, format_report, run_checks

    checks = run_checks(start=False, probes=Probes(nvinfer=lambda: None))
    (native,) = [c for c in checks if c.name == "tensorrt (native backend, build-engine)"]
    assert native.ok is False and native.fix
    assert native.detail.startswith(f"{trt.__version__} imports, but TensorRT {trt.__version__} could not create its "
                                    "Runtime: no usable CUDA GPU (CUDA initialization failure with error: 35")
    assert "to fix:" in format_report(checks)
