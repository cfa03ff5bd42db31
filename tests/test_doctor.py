"""``diffvos doctor`` on this machine (CPU only, no TensorRT) and on injected GPU machines; with the
real TensorRT bindings it is checked in tests/test_trt_bindings.py."""

from __future__ import annotations

import subprocess
import types

import pytest

from diffvos.bundle import TensorRTPlan, read_manifest, sha256_file, write_manifest
from diffvos.cli import main
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.cuda_device import Cuda
from diffvos.runtime.doctor import TINY_MODEL, Probes, format_report, run_checks
from tests.fake_cuda import FakeCudaRuntime
from tests.test_ort_options import CPU, CUDA, GPU_BUILD, TRT, FakeOrt
from tests.test_trt import _fake_trt


def _by_name(checks):
    return {c.name: c for c in checks}


def _smi(stdout="NVIDIA H100 80GB HBM3, 560.35.03, 81559 MiB, 9.0\n", code=0):
    def run(cmd, **kw):
        assert cmd[0] == "/usr/bin/nvidia-smi" and kw.get("timeout")
        return subprocess.CompletedProcess(cmd, code, stdout, "")
    return run


def test_this_machine_cpu_only(capsys):
    """Whatever is missing here, the doctor reports and exits 0; the CPU provider really starts."""
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for section in ("platform:", "gpu:", "onnxruntime:", "tensorrt:"):
        assert section in out
    checks = _by_name(run_checks())
    assert checks["cpu (CPUExecutionProvider)"].ok is True
    assert checks["cpu (CPUExecutionProvider)"].detail == "starts and runs"
    for name in ("tensorrt (TensorrtExecutionProvider)", "cuda (CUDAExecutionProvider)"):
        if name in checks and checks[name].ok is False:  # listed by onnxruntime-gpu, but no GPU here
            assert "is not usable here (" in checks[name].detail and checks[name].fix
    trt = checks["tensorrt (native backend, build-engine)"]
    if trt.ok is False:
        assert trt.fix and "to fix:" in out


def test_a_working_gpu_machine_has_nothing_to_fix(tmp_path):
    rt = FakeCudaRuntime("NVIDIA H100 80GB HBM3", (9, 0), total=80 << 30)
    probes = Probes(ort=FakeOrt(), trt=_fake_trt(rt), cuda=Cuda(rt), which=lambda n: f"/usr/bin/{n}", run=_smi(),
                    nvinfer=lambda: "10.3.0")
    checks = run_checks(probes=probes)
    c = _by_name(checks)
    assert c["GPU 0 (nvidia-smi)"].detail == "NVIDIA H100 80GB HBM3, 560.35.03, 81559 MiB, 9.0"
    assert c["CUDA device 0"].detail == "NVIDIA H100 80GB HBM3, compute capability 9.0, 80.0 GiB"
    assert c["cuda-python"].detail == "injected: CUDA runtime 12.9, the driver supports CUDA 12.6"
    for name in ("tensorrt (TensorrtExecutionProvider)", "cuda (CUDAExecutionProvider)", "cpu (CPUExecutionProvider)"):
        assert c[name].ok is True and c[name].detail == "starts and runs"
    assert c["tensorrt (native backend, build-engine)"].detail == "10.3.0: creates its runtime"
    assert c["libnvinfer (ONNX Runtime's TensorRT EP)"].detail == "10.3.0"
    assert not [x for x in checks if x.ok is False]
    assert format_report(checks).endswith("nothing missing for what this machine offers")


def test_missing_pieces_each_get_their_fix():
    rt = FakeCudaRuntime(no_driver="returns")
    ort = FakeOrt(**{TRT: "raise", CUDA: "drop"})
    ort.capi = types.SimpleNamespace(build_and_package_info=types.SimpleNamespace(cuda_version="13.0"))
    probes = Probes(ort=ort, cuda=Cuda(rt), which=lambda n: None, nvinfer=lambda: None)
    checks = run_checks(probes=probes)
    c = _by_name(checks)
    assert c["CUDA device"].ok is False and "cudaErrorInsufficientDriver" in c["CUDA device"].detail
    assert c["tensorrt (TensorrtExecutionProvider)"].ok is False
    assert "libnvinfer.so.10: cannot open shared object file" in c["tensorrt (TensorrtExecutionProvider)"].detail
    assert c["cuda (CUDAExecutionProvider)"].ok is False and "libcublasLt.so.12" in c["cuda (CUDAExecutionProvider)"].detail
    assert c["cpu (CPUExecutionProvider)"].ok is True
    report = format_report(checks)
    assert "to fix:" in report and "diffvos[cuda12]" in report and "libnvinfer.so.10 on the library path" in report


def test_driver_older_than_the_onnxruntime_build(monkeypatch):
    rt = FakeCudaRuntime()  # the fake driver supports CUDA 12.6
    ort = FakeOrt(available=[CPU])
    ort.capi = types.SimpleNamespace(build_and_package_info=types.SimpleNamespace(cuda_version="13.0"))
    c = _by_name(run_checks(start=False, probes=Probes(ort=ort, cuda=Cuda(rt), which=lambda n: None,
                                                       nvinfer=lambda: None)))
    assert c["CUDA major"].ok is False and "built for CUDA 13.0, the driver supports CUDA 12.6" in c["CUDA major"].detail


def test_a_failing_probe_is_reported_not_raised():
    def broken(cmd, **kw):
        raise ValueError("unexpected")

    checks = run_checks(start=False, probes=Probes(ort=FakeOrt(available=[CPU]), cuda=Cuda(FakeCudaRuntime()),
                                                  which=lambda n: "/usr/bin/nvidia-smi", run=broken,
                                                  nvinfer=lambda: None))
    assert any(c.section == "gpu" and c.ok is False and "ValueError: unexpected" in c.detail for c in checks)
    assert _by_name(checks)["providers listed"].detail == CPU


def test_bundle_plans_against_this_machine(tmp_path):
    bundle = make_toy_bundle(tmp_path / "b", height=None, width=None)
    rt = FakeCudaRuntime("NVIDIA H100 80GB HBM3", (9, 0))
    probes = Probes(ort=FakeOrt(available=[CPU]), trt=_fake_trt(rt), cuda=Cuda(rt), which=lambda n: None,
                    nvinfer=lambda: None)
    c = _by_name(run_checks(str(bundle), start=False, probes=probes))
    assert c["features: plan for --backend trt"].ok is False and c["features: plan for --backend trt"].detail == "none built"
    # 1..8 streams (the toy exports a stream axis), 8x8 .. 112x112 pixels
    assert c["features: TensorRT EP profile"].detail == "[1, 3, 8, 8] .. [8, 3, 112, 112], optimised for [8, 3, 64, 112]"
    (bundle / "features.plan").write_bytes(b"plan")
    m = read_manifest(bundle)
    m.tensorrt["features"] = TensorRTPlan(plan="features.plan", sha256=sha256_file(bundle / "features.plan"),
                                          trt_version="10.3.0", gpu="Orin", compute_capability="8.7",
                                          precision="fp32", profile={})
    write_manifest(bundle, m)
    plan = _by_name(run_checks(str(bundle), start=False, probes=probes))["features: plan for --backend trt"]
    assert plan.ok is False and "built for Orin (compute capability 8.7), this GPU is NVIDIA H100" in plan.detail
    assert plan.fix == f"diffvos build-engine --bundle {bundle}"
    same = Probes(ort=probes.ort, trt=probes.trt, cuda=Cuda(FakeCudaRuntime("Orin", (8, 7))), which=lambda n: None,
                  nvinfer=lambda: None)
    assert _by_name(run_checks(str(bundle), start=False, probes=same))["features: plan for --backend trt"].ok is True
    assert _by_name(run_checks(str(tmp_path / "nope"), start=False, probes=same))[str(tmp_path / "nope")].ok is False


def test_the_tiny_model_is_a_relu_graph():
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(TINY_MODEL)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Relu"] and model.ir_version == 8
    assert GPU_BUILD[-1] == CPU
