"""The device check of the native TensorRT backend's CUDA side, for a machine with an NVIDIA GPU.

    PYTHONPATH=. python3 tools/gpu_check.py            # on the GPU machine (cuda-python + CuPy)
    PYTHONPATH=. python3 tools/gpu_check.py --fake     # here: the same script over tests/fake_cuda.py

What CI cannot run: diffvos.runtime.cuda_device over the real cuda-python and driver, and
TrtEngine's data path (pinned buffers, device buffers bound by address, one non-blocking stream
per fork, forks on threads, views returned without a copy, close() freeing what it took) with a
stand-in TensorRT whose ``execute_async_v3`` runs a CuPy kernel on the bound device pointers on
the engine's stream. TensorRT itself is not needed (the device image has none); ONNX Runtime's
CUDA/TensorRT providers are not covered here. Ends by starting a child process that uses an
engine and exits without closing it: its exit code must be 0 (pycuda's pushed context made it
134). Prints one JSON summary; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import enum
import json
import subprocess
import sys
import threading
import time
import types

import numpy as np


def reference(x: np.ndarray) -> np.ndarray:
    e, c, h, w = x.shape
    pooled = x.reshape(e, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5)).mean(axis=0)
    return np.concatenate([pooled, pooled[:1] * 2])[None].astype(np.float32)


def cupy_kernel():
    import cupy as cp

    def run(x_ptr: int, out_ptr: int, shape: tuple[int, ...], stream: int) -> None:
        e, c, h, w = shape
        nbytes = e * c * h * w * 4
        x = cp.ndarray(shape, cp.float32, cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(x_ptr, nbytes, None), 0))
        oshape = (1, c + 1, h // 8, w // 8)
        out = cp.ndarray(oshape, cp.float32,
                         cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(out_ptr, int(np.prod(oshape)) * 4, None), 0))
        with cp.cuda.ExternalStream(stream):
            pooled = x.reshape(e, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5)).mean(axis=0)
            out[0, :c] = pooled
            out[0, c] = pooled[0] * 2
    return run


def fake_kernel(rt):
    def run(x_ptr, out_ptr, shape, stream):
        x = rt.device_array(x_ptr, int(np.prod(shape)) * 4).view(np.float32).reshape(shape)
        y = reference(x)
        rt.device_array(out_ptr, y.nbytes)[:] = y.view(np.uint8).ravel()
    return run


def standin_trt(kernel, lo=(2, 3, 64, 64), hi=(2, 3, 256, 512)):
    """tensorrt's surface as TrtPlan/TrtEngine use it, computing with ``kernel`` on device pointers."""
    trt = types.SimpleNamespace(__version__="standin", contexts=[])

    class Severity(enum.IntEnum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Context:
        def __init__(self):
            self.shape, self.addr, self.threads = None, {}, set()

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            e, c, h, w = self.shape
            return (e, c, h, w) if name == "x_t" else (1, c + 1, h // 8, w // 8)

        def set_tensor_address(self, name, addr):
            self.addr[name] = int(addr)

        def execute_async_v3(self, stream):
            self.threads.add(threading.get_ident())
            kernel(self.addr["x_t"], self.addr["features"], self.shape, int(stream))
            return True

    class Engine:
        num_io_tensors = 2
        device_memory_size_v2 = 0

        def get_tensor_name(self, i):
            return ["x_t", "features"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "x_t" else "out"

        def get_tensor_dtype(self, name):
            return np.float32

        def get_tensor_shape(self, name):
            return (2, 3, -1, -1) if name == "x_t" else (1, 4, -1, -1)

        def get_tensor_profile_shape(self, name, profile):
            return [lo, lo, hi]

        def create_execution_context(self):
            ctx = Context()
            trt.contexts.append(ctx)
            return ctx

    trt.ILogger = ILogger
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda plan: Engine())
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in")
    trt.nptype = lambda t: t
    return trt


def check(fake: bool) -> dict:
    from diffvos.runtime.cuda_device import Cuda
    from diffvos.runtime.trt_engine import TrtEngine, TrtPlan

    if fake:
        from tests.fake_cuda import FakeCudaRuntime

        rt = FakeCudaRuntime()
        cuda, kernel = Cuda(rt), fake_kernel(rt)
    else:
        cuda, kernel = Cuda(), cupy_kernel()
    out: dict = {"facts": cuda.device_facts(), "versions": cuda.versions()}
    free0, total = cuda.memory_info()
    # pinned round trip, 64 MiB
    host = cuda.pinned_empty(16 << 20, np.float32)
    host[:] = np.arange(host.size, dtype=np.float32)
    back = cuda.pinned_empty(host.size, np.float32)
    dev, stream = cuda.malloc(host.nbytes), cuda.stream_create()
    t0 = time.perf_counter()
    cuda.htod_async(dev, host, stream)
    cuda.dtoh_async(back, dev, stream)
    cuda.stream_sync(stream)
    out["round_trip_64MiB_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    out["round_trip_equal"] = bool(np.array_equal(host, back))
    cuda.free(dev)
    cuda.stream_destroy(stream)
    # engines: forks on threads
    trt = standin_trt(kernel)
    engine = TrtEngine(TrtPlan(b"plan", trt, cuda))
    forks = [engine.fork() for _ in range(3)]
    errors: list[str] = []

    def work(eng, seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            shape = (2, 3, 8 * int(rng.integers(8, 33)), 8 * int(rng.integers(8, 65)))
            x = rng.standard_normal(shape).astype(np.float32)
            got = eng.infer({"x_t": x})["features"]
            if not np.allclose(got, reference(x), rtol=1e-4, atol=1e-5):
                errors.append(f"{seed}: {shape} max err {float(np.abs(got - reference(x)).max())}")

    threads = [threading.Thread(target=work, args=(e, i)) for i, e in enumerate([engine, *forks])]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["forks_seconds"] = round(time.perf_counter() - t0, 3)
    out["fork_errors"] = errors
    out["contexts"] = len(trt.contexts)
    out["one_thread_per_context"] = all(len(c.threads) == 1 for c in trt.contexts)
    a = engine.infer({"x_t": np.ones((2, 3, 64, 64), np.float32)})["features"]
    b = engine.infer({"x_t": np.full((2, 3, 64, 64), 2, np.float32)})["features"]
    out["views_share_memory"] = bool(np.shares_memory(a, b))
    out["engine_device_bytes"] = engine.device_memory_bytes
    used = total - cuda.memory_info()[0]
    for e in [engine, *forks]:
        e.close()
    out["device_used_MiB_with_4_engines"] = round((used - (total - free0)) / 2**20, 1)
    out["device_used_MiB_after_close"] = round((total - cuda.memory_info()[0] - (total - free0)) / 2**20, 1)
    out["ok"] = out["round_trip_equal"] and not errors and out["contexts"] == 4 and out["one_thread_per_context"] \
        and out["views_share_memory"]
    return out


CHILD = """
import numpy as np, sys
sys.path.insert(0, 'tools')
from gpu_check import standin_trt, cupy_kernel
from diffvos.runtime.cuda_device import Cuda
from diffvos.runtime.trt_engine import TrtEngine, TrtPlan
e = TrtEngine(TrtPlan(b'plan', standin_trt(cupy_kernel()), Cuda()))
e.infer({'x_t': np.ones((2, 3, 64, 64), np.float32)})
print('child done, exiting without close()')
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fake", action="store_true", help="run over tests/fake_cuda.py (no GPU)")
    args = p.parse_args()
    result = check(args.fake)
    if not args.fake:
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
        result["child_exit_code"] = child.returncode
        result["child_tail"] = (child.stdout + child.stderr)[-400:]
        result["ok"] = result["ok"] and child.returncode == 0
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
