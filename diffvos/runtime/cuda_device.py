"""The few CUDA runtime calls the native TensorRT backend needs, over cuda-python, with typed errors.

cuda-python is what NVIDIA's TensorRT 10 samples use: small wheels (x86_64 and aarch64), no CUDA
headers or compiler needed, and no context of its own to push: the runtime API works on the
device's *primary* context, made current per thread by ``cudaSetDevice`` (:meth:`Cuda.use`), so
nothing is left pushed at interpreter exit (pycuda's ``push()`` without ``pop()`` made Python
abort with exit code 134 after the work was done).

Works with the layouts and error shapes of cuda-python 12.x and 13.x:

* ``cuda.bindings.runtime`` (cuda-bindings >= 12.6.1 and every 13.x); ``cuda.cudart`` before
  that (deprecated in 12.6-12.9, gone in 13);
* every call returns a tuple ``(cudaError_t, *values)``; with no NVIDIA driver, 12.9 and 13.x
  return ``cudaErrorInsufficientDriver`` while 12.6 *raises* ``RuntimeError`` (libcuda.so.1 cannot
  be opened). Both become :class:`CudaUnavailable`, any other failure :class:`CudaError`; both
  are :class:`~diffvos.errors.BackendError`, so the CLI prints them as one line.

Importing this module imports nothing from CUDA; :func:`load_cudart` does, on use. Tests inject a
fake runtime module (``Cuda(rt=fake)``).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
import weakref
from typing import Any

import numpy as np

from diffvos.errors import BackendError
from diffvos.runtime.install_hints import install_hint

# CUDA errors that mean "no usable GPU here" rather than "this call went wrong"
NO_GPU_ERRORS = frozenset({
    "cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInitializationError",
    "cudaErrorDevicesUnavailable", "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice",
    "cudaErrorInvalidDevice", "NoDriver", "ImportError",
})


class CudaError(BackendError):
    """A CUDA call failed: ``call`` (e.g. 'cudaMalloc'), ``code`` (int), ``name`` (e.g.
    'cudaErrorMemoryAllocation')."""

    def __init__(self, call: str, code: int, name: str, text: str = "") -> None:
        self.call, self.code, self.name = call, code, name
        super().__init__(self.describe(f"{call} failed: {name} ({code})" + (f": {text}" if text else "")))

    @staticmethod
    def describe(failure: str) -> str:
        return failure


class CudaUnavailable(CudaError):
    """No usable GPU: cuda-python missing, no NVIDIA driver, a driver too old, or no such device."""

    @staticmethod
    def describe(failure: str) -> str:
        return (f"no usable CUDA GPU ({failure}); check that `nvidia-smi` lists the GPU and that the driver "
                "supports the CUDA major of cuda-python and TensorRT (`diffvos doctor` shows both)")


def load_cudart() -> Any:
    """cuda-python's runtime module, whichever layout is installed (imports CUDA's Python bindings;
    needs no driver)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from cuda import cudart
        return cudart
    except ImportError as exc:
        raise CudaUnavailable("import cuda.bindings.runtime", -1, "ImportError",
                              f"cuda-python is not installed ({exc}); {install_hint('cuda-python')}") from exc


def cuda_python_version() -> str | None:
    """The installed cuda-python / cuda-bindings version, without importing CUDA."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _version_text(v: int) -> str:
    """CUDA's integer version (12090) as text ('12.9')."""
    return f"{v // 1000}.{v % 1000 // 10}"


class Cuda:
    """Thin adapter: device facts, device and pinned memory, streams, async copies."""

    def __init__(self, rt: Any = None, device: int = 0) -> None:
        self.rt = rt if rt is not None else load_cudart()
        self.device = device

    def call(self, name: str, *args: Any) -> Any:
        """``rt.<name>(*args)``: the value(s) after the error code; raises on a CUDA error."""
        try:
            result = getattr(self.rt, name)(*args)
        except RuntimeError as exc:  # cuda-python 12.6 with no driver; the driver API's DynamicLibNotFoundError
            raise CudaUnavailable(name, -1, "NoDriver", f"the NVIDIA driver (libcuda.so.1) cannot be loaded: {exc}") \
                from exc
        err, *values = result if isinstance(result, tuple) else (result,)
        code = int(err)
        if code != 0:
            ename = getattr(err, "name", None) or str(code)
            cls = CudaUnavailable if ename in NO_GPU_ERRORS else CudaError
            raise cls(name, code, ename, self._error_text(err))
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def _error_text(self, err: Any) -> str:
        try:
            _, raw = self.rt.cudaGetErrorString(err)
        except Exception:  # noqa: BLE001 - the message is a nicety; the code and name are enough
            return ""
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    # -- device -----------------------------------------------------------------------------------
    def device_count(self) -> int:
        return int(self.call("cudaGetDeviceCount"))

    def use(self, device: int | None = None) -> None:
        """Make ``device`` current in the calling thread (the runtime API's device is per thread;
        its primary context is shared by every thread)."""
        self.call("cudaSetDevice", self.device if device is None else device)

    def device_facts(self, device: int | None = None) -> dict[str, Any]:
        """``{"gpu", "compute_capability", "total_memory"}`` of a device; CudaUnavailable if absent."""
        device = self.device if device is None else device
        count = self.device_count()
        if not 0 <= device < count:
            raise CudaUnavailable("cudaGetDeviceProperties", 101, "cudaErrorInvalidDevice",
                                  f"device {device} requested, {count} present")
        prop = self.call("cudaGetDeviceProperties", device)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"gpu": name.rstrip("\x00").strip(), "compute_capability": f"{prop.major}.{prop.minor}",
                "total_memory": int(prop.totalGlobalMem)}

    def versions(self) -> dict[str, str | None]:
        """CUDA runtime (cuda-python's) and driver versions as text; the driver's is None without one."""
        runtime = _version_text(int(self.call("cudaRuntimeGetVersion")))
        try:
            driver_v = int(self.call("cudaDriverGetVersion"))
        except CudaError:
            driver_v = 0
        return {"runtime": runtime, "driver": _version_text(driver_v) if driver_v else None}

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of the current device (whole device: every process's use counts)."""
        free, total = self.call("cudaMemGetInfo")
        return int(free), int(total)

    # -- memory -----------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", max(int(nbytes), 1)))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def pinned_empty(self, count: int, dtype: Any) -> np.ndarray:
        """A flat numpy array in page-locked host memory (``cudaMallocHost``); the memory is freed
        when the array and every view of it are gone."""
        dtype = np.dtype(dtype)
        nbytes = max(int(count) * dtype.itemsize, 1)
        ptr = int(self.call("cudaMallocHost", nbytes))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        weakref.finalize(raw, self.rt.cudaFreeHost, ptr)  # views keep ``raw`` alive through .base
        return np.frombuffer(raw, dtype=dtype, count=int(count))

    # -- streams and copies -----------------------------------------------------------------------
    def stream_create(self) -> int:
        """A non-blocking stream, as the int handle ``execute_async_v3`` takes."""
        return int(self.call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking))

    def stream_sync(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream: int) -> None:
        self.call("cudaStreamDestroy", stream)

    def htod_async(self, dst: int, host: np.ndarray, stream: int) -> None:
        self._copy(dst, _address(host), host.nbytes, "cudaMemcpyHostToDevice", stream)

    def dtoh_async(self, host: np.ndarray, src: int, stream: int) -> None:
        self._copy(_address(host), src, host.nbytes, "cudaMemcpyDeviceToHost", stream)

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, getattr(self.rt.cudaMemcpyKind, kind), stream)


def _address(a: np.ndarray) -> int:
    if not a.flags.c_contiguous:
        raise ValueError("a CUDA copy needs a C-contiguous host array")
    return int(a.ctypes.data)


_shared: dict[int, Cuda] = {}
_shared_lock = threading.Lock()


def shared_cuda(device: int = 0) -> Cuda:
    """One adapter per device and process (the import happens once)."""
    with _shared_lock:
        if device not in _shared:
            _shared[device] = Cuda(device=device)
        return _shared[device]


def gpu_summary(cuda: Cuda | None = None) -> dict[str, Any]:
    """What cuda-python can tell about this machine, never raising: ``devices`` (list of facts),
    ``runtime``/``driver`` versions, or ``error`` (why nothing could be read)."""
    out: dict[str, Any] = {"devices": []}
    try:
        cuda = cuda or Cuda()
        out.update(cuda.versions())
        out["devices"] = [cuda.device_facts(i) for i in range(cuda.device_count())]
    except CudaError as exc:
        out["error"] = str(exc)
    return out
