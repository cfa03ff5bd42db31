"""The install matrix in pyproject.toml: what each extra installs on each kind of machine, by
evaluating every requirement's environment marker for that machine (pip evaluates markers against
the running interpreter only, so a dry run here cannot show an aarch64 Jetson's result)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
packaging_requirements = pytest.importorskip("packaging.requirements")

ROOT = Path(__file__).resolve().parents[1]

MACHINES = {  # PEP 508 marker environments
    "x86_64 server, py3.11": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                              "python_version": "3.11", "python_full_version": "3.11.7"},
    "x86_64 server, py3.10": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                              "python_version": "3.10", "python_full_version": "3.10.12"},
    "Jetson JetPack 6": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                         "python_version": "3.10", "python_full_version": "3.10.12"},
    "macOS arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "python_version": "3.12", "python_full_version": "3.12.4"},
    "Windows": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                "python_version": "3.12", "python_full_version": "3.12.4"},
}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def installs(machine: str, extra: str | None = None, seen: frozenset[str] = frozenset()) -> dict[str, str]:
    """name -> specifier of what ``pip install diffvos[extra]`` asks for on ``machine`` (self-references followed)."""
    project = _project()
    reqs = list(project["dependencies"]) + (list(project["optional-dependencies"][extra]) if extra else [])
    out: dict[str, str] = {}
    for text in reqs:
        req = packaging_requirements.Requirement(text)
        if req.marker is not None and not req.marker.evaluate(dict(MACHINES[machine], extra="")):
            continue
        if req.name == project["name"]:
            for inner in sorted(req.extras - seen):
                out.update(installs(machine, inner, seen | {inner}))
            continue
        out[req.name] = str(req.specifier)
    return out


def test_jetson_gets_no_onnxruntime_and_no_pypi_tensorrt():
    assert "onnxruntime" not in installs("Jetson JetPack 6") and "onnxruntime-gpu" not in installs("Jetson JetPack 6")
    assert installs("Jetson JetPack 6", "jetson")["cuda-python"] == "<13,>=12.6"
    for extra in ("trt", "trt-cu12", "trt-cu13", "cuda12"):
        assert not any(n.startswith(("tensorrt", "onnxruntime")) for n in installs("Jetson JetPack 6", extra)), extra
    assert installs("Jetson JetPack 6", "cpu") == {**installs("Jetson JetPack 6"), "onnxruntime": ">=1.18"}


def test_x86_64_cuda_majors_and_tensorrt_10():
    base = installs("x86_64 server, py3.11")
    assert base["onnxruntime-gpu"] == ">=1.18" and "onnxruntime" not in base
    assert installs("x86_64 server, py3.11", "cpu") == base  # never both ONNX Runtime packages
    cu12 = installs("x86_64 server, py3.11", "trt")  # the former name: CUDA 12, TensorRT 10
    assert cu12["tensorrt-cu12"] == "<11,>=10.3" and cu12["cuda-python"] == "<13,>=12.6"
    assert cu12["onnxruntime-gpu"] == "<1.27,>=1.19"  # ORT built for CUDA 12
    cu13 = installs("x86_64 server, py3.11", "trt-cu13")
    assert cu13["tensorrt-cu13"] == "<11,>=10.13.2" and cu13["cuda-python"] == "<14,>=13"
    assert cu13["onnxruntime-gpu"] == ">=1.27"


def test_no_pycuda_and_no_unpinned_tensorrt_anywhere():
    for machine in MACHINES:
        for extra in [None, *_project()["optional-dependencies"]]:
            got = installs(machine, extra)
            assert "pycuda" not in got and "tensorrt" not in got, (machine, extra)


def test_cpu_machines_get_the_cpu_build():
    for machine in ("macOS arm64", "Windows"):
        got = installs(machine)
        assert got["onnxruntime"] == ">=1.18" and "onnxruntime-gpu" not in got


def test_dev_extra_installs_the_test_wheels_only_where_they_exist():
    assert installs("x86_64 server, py3.11", "dev")["tensorrt-cu12-bindings"] == "==10.3.0"
    for machine in ("Jetson JetPack 6", "macOS arm64", "Windows"):
        assert "tensorrt-cu12-bindings" not in installs(machine, "dev")  # 10.3.0 has x86_64 (and Windows) wheels only
