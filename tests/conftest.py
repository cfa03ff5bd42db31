"""Shared test fixtures: paths to ../shared data, skipping with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared fixtures/data next to the project), which is missing")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def adm_fixture_dir() -> Path:
    return _need(SHARED / "fixtures" / "adm")


@pytest.fixture(scope="session")
def propagation_fixture_dir() -> Path:
    return _need(SHARED / "fixtures" / "propagation")


@pytest.fixture(scope="session")
def davis_root() -> Path:
    return _need(SHARED / "data" / "davis2016")


@pytest.fixture(scope="module")
def torch_one_thread():
    """The test models are tiny: on a 2-core machine one torch thread beats two fighting.
    Module-scoped; modules that use torch request it with ``pytestmark``/autouse."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def gpu_skip_reason() -> str | None:
    """Why tests marked ``gpu`` cannot run here (None: a CUDA device is visible to cuda-python).
    TensorRT being importable says nothing: its real bindings import on any machine (and do in
    tests/test_trt_bindings.py)."""
    from diffvos.runtime.cuda_device import Cuda, CudaError

    try:
        count = Cuda().device_count()
    except CudaError as exc:
        return f"no CUDA device: {exc}"
    return None if count else "no CUDA device (cudaGetDeviceCount returned 0)"


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("gpu")]
    reason = gpu_skip_reason() if marked else None
    for item in marked if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))
