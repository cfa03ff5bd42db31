"""A stand-in for cuda-python's ``cuda.bindings.runtime`` module, injected as ``Cuda(rt=FakeCudaRuntime())``.

Same call shapes as the real module: every function returns ``(error, *values)`` with an error
object that converts to int and has a ``.name`` (cuda-bindings 12.9/13 "FastEnum"), pointers are
ints, streams are objects that convert to int. "Device" memory is host memory at real addresses,
so ``cudaMemcpyAsync`` is a checked ``memmove`` and a fake TensorRT context can read its inputs
through the addresses bound to it. Every copy is checked against the allocations (a copy past a
buffer's end fails the test). ``no_driver="returns"`` behaves like cuda-bindings >= 12.9 without a
driver, ``"raises"`` like cuda-python 12.6.
"""

from __future__ import annotations

import ctypes
import threading
import types

import numpy as np


class Err:
    def __init__(self, code: int, name: str) -> None:
        self.code, self.name = code, name

    def __int__(self) -> int:
        return self.code

    def __repr__(self) -> str:
        return f"<cudaError_t.{self.name}: {self.code}>"


SUCCESS = Err(0, "cudaSuccess")
NO_DRIVER = Err(35, "cudaErrorInsufficientDriver")
OUT_OF_MEMORY = Err(2, "cudaErrorMemoryAllocation")
TEXT = {35: b"CUDA driver version is insufficient for CUDA runtime version", 2: b"out of memory"}


class Stream:
    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudaRuntime:
    cudaStreamNonBlocking = 1
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, gpu: str = "Orin", cc: tuple[int, int] = (8, 7), total: int = 8 << 30, devices: int = 1,
                 no_driver: str | None = None, free: int | None = None) -> None:
        self.gpu, self.cc, self.total, self.devices, self.no_driver = gpu, cc, total, devices, no_driver
        self.free_bytes = total // 2 if free is None else free
        self.memory: dict[int, np.ndarray] = {}  # device pointer -> its bytes
        self.pinned: dict[int, np.ndarray] = {}
        self.streams: dict[int, int] = {}  # handle -> flags
        self.destroyed: list[int] = []
        self.set_device: dict[int, int] = {}  # thread id -> device it made current
        self.copies = {"htod": 0, "dtoh": 0}
        self.fail_malloc = False
        self._lock = threading.Lock()
        self._next_stream = 100

    def _gate(self):
        if self.no_driver == "raises":
            raise RuntimeError('Function "cuInit" not found')
        if self.no_driver == "returns":
            return NO_DRIVER
        return None

    # -- device --------------------------------------------------------------------------------
    def cudaGetDeviceCount(self):  # noqa: N802 - cuda-python's names
        return (err, None) if (err := self._gate()) else (SUCCESS, self.devices)

    def cudaSetDevice(self, device):  # noqa: N802
        if (err := self._gate()):
            return (err,)
        if not 0 <= device < self.devices:
            return (Err(101, "cudaErrorInvalidDevice"),)
        self.set_device[threading.get_ident()] = device
        return (SUCCESS,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        if (err := self._gate()):
            return (err, None)
        return (SUCCESS, types.SimpleNamespace(name=self.gpu.encode() + b"\x00" * 4, major=self.cc[0],
                                               minor=self.cc[1], totalGlobalMem=self.total))

    def cudaRuntimeGetVersion(self):  # noqa: N802
        return (SUCCESS, 12090)

    def cudaDriverGetVersion(self):  # noqa: N802
        return (SUCCESS, 0 if self.no_driver else 12060)

    def cudaMemGetInfo(self):  # noqa: N802
        return (err, None, None) if (err := self._gate()) else (SUCCESS, self.free_bytes, self.total)

    def cudaGetErrorString(self, err):  # noqa: N802
        return (SUCCESS, TEXT.get(int(err), b"unknown error"))

    # -- memory --------------------------------------------------------------------------------
    def cudaMalloc(self, nbytes):  # noqa: N802
        if (err := self._gate()):
            return (err, None)
        if self.fail_malloc:
            return (OUT_OF_MEMORY, None)
        buf = np.zeros(nbytes, np.uint8)
        with self._lock:
            self.memory[buf.ctypes.data] = buf
        return (SUCCESS, buf.ctypes.data)

    def cudaFree(self, ptr):  # noqa: N802
        with self._lock:
            del self.memory[ptr]
        return (SUCCESS,)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        if (err := self._gate()):
            return (err, None)
        buf = np.zeros(nbytes, np.uint8)
        with self._lock:
            self.pinned[buf.ctypes.data] = buf
        return (SUCCESS, buf.ctypes.data)

    def cudaFreeHost(self, ptr):  # noqa: N802
        with self._lock:
            self.pinned.pop(ptr, None)
        return (SUCCESS,)

    def device_array(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes at a device pointer (for the fake TensorRT context); fails outside an allocation."""
        for base, buf in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + buf.nbytes:
                return buf[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"{nbytes} bytes at {ptr:#x} are not inside one device allocation")

    def _host_ok(self, ptr: int, nbytes: int) -> None:
        for base, buf in self.pinned.items():
            if base <= ptr and ptr + nbytes <= base + buf.nbytes:
                return
        raise AssertionError(f"host side of a copy ({nbytes} bytes at {ptr:#x}) is not pinned memory")

    # -- streams and copies --------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        if (err := self._gate()):
            return (err, None)
        with self._lock:
            self._next_stream += 1
            self.streams[self._next_stream] = flags
            return (SUCCESS, Stream(self._next_stream))

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        assert int(stream) in self.streams, "synchronising an unknown stream"
        return (SUCCESS,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        with self._lock:
            del self.streams[int(stream)]
            self.destroyed.append(int(stream))
        return (SUCCESS,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        assert int(stream) in self.streams, "copy on an unknown stream"
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self._host_ok(src, count)
            self.device_array(dst, count)
            self.copies["htod"] += count
        else:
            self._host_ok(dst, count)
            self.device_array(src, count)
            self.copies["dtoh"] += count
        ctypes.memmove(dst, src, count)
        return (SUCCESS,)
