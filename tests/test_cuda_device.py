"""The cuda-python adapter: both error shapes of cuda-python (12.6 raises, 12.9/13 return an
error code), typed errors, pinned memory, and the real module on this GPU-less machine."""

from __future__ import annotations

import gc
import importlib.util

import numpy as np
import pytest

from diffvos.errors import BackendError
from diffvos.runtime.cuda_device import (
    Cuda,
    CudaError,
    CudaUnavailable,
    gpu_summary,
    load_cudart,
)
from tests.conftest import gpu_skip_reason
from tests.fake_cuda import FakeCudaRuntime


def test_facts_versions_and_memory():
    cuda = Cuda(FakeCudaRuntime("NVIDIA H100 80GB HBM3", (9, 0), total=80 << 30, free=70 << 30))
    assert cuda.device_facts() == {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                   "total_memory": 80 << 30}
    assert cuda.versions() == {"runtime": "12.9", "driver": "12.6"}
    assert cuda.memory_info() == (70 << 30, 80 << 30)
    with pytest.raises(CudaUnavailable, match="device 3 requested, 1 present"):
        cuda.device_facts(3)


@pytest.mark.parametrize("shape, detail", [
    ("returns", "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (35): CUDA driver version is insufficient"),
    ("raises", 'cudaGetDeviceCount failed: NoDriver (-1): the NVIDIA driver (libcuda.so.1) cannot be loaded: '
               'Function "cuInit" not found'),
])
def test_no_driver_in_both_error_shapes(shape, detail):
    cuda = Cuda(FakeCudaRuntime(no_driver=shape))
    with pytest.raises(CudaUnavailable) as info:
        cuda.device_count()
    assert str(info.value).startswith(f"no usable CUDA GPU ({detail}") and "nvidia-smi" in str(info.value)
    assert isinstance(info.value, BackendError) and info.value.name in ("cudaErrorInsufficientDriver", "NoDriver")
    summary = gpu_summary(cuda)
    assert summary["devices"] == [] and "no usable CUDA GPU" in summary["error"]


def test_other_failures_are_cuda_errors_not_no_gpu():
    rt = FakeCudaRuntime()
    rt.fail_malloc = True
    with pytest.raises(CudaError) as info:
        Cuda(rt).malloc(10)
    assert not isinstance(info.value, CudaUnavailable) and info.value.code == 2 and "out of memory" in str(info.value)


def test_pinned_memory_round_trip_and_release():
    rt = FakeCudaRuntime()
    cuda = Cuda(rt)
    host = cuda.pinned_empty(6, np.float32)
    host[:] = np.arange(6)
    back = cuda.pinned_empty(6, np.float32)
    dev, stream = cuda.malloc(host.nbytes), cuda.stream_create()
    cuda.htod_async(dev, host, stream)
    cuda.dtoh_async(back, dev, stream)
    cuda.stream_sync(stream)
    np.testing.assert_array_equal(back, np.arange(6))
    view = back[2:4]
    del back
    gc.collect()
    assert len(rt.pinned) == 2  # a view keeps its pinned memory alive
    del view, host
    gc.collect()
    assert rt.pinned == {}  # freed with the last view
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.htod_async(dev, np.zeros((4, 4), np.float32)[:, ::2], stream)


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-python is not installed (dev extra)")
def test_real_cuda_python_imports_without_a_driver_and_errors_clearly_on_use():
    rt = load_cudart()
    assert rt.__name__.endswith("runtime") or rt.__name__.endswith("cudart")
    if gpu_skip_reason() is None:
        pytest.skip("a CUDA device is visible here")
    cuda = Cuda(rt)
    assert cuda.versions()["runtime"].split(".")[0] in ("12", "13")  # cudart is linked into cuda-python
    with pytest.raises(CudaUnavailable, match="no usable CUDA GPU"):
        cuda.device_count()
    assert "no usable CUDA GPU" in gpu_skip_reason()  # what the gpu marker's skip says here
