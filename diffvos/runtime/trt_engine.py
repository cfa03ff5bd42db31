"""Native TensorRT engines (``--backend trt``): a bundle's serialized plan, run through cuda-python.

A :class:`TrtPlan` is the deserialised engine, loaded once per graph and shared (TensorRT's
runtime and engine may be used from several threads; creating contexts from them is thread-safe).
A :class:`TrtEngine` is one stream's use of it: its own execution context, non-blocking CUDA
stream, device buffers and page-locked host buffers, allocated once at the optimisation profile's
maximum and bound by address (``set_tensor_address``) once. ``fork()`` gives another stream its
own :class:`TrtEngine` on the same plan; :class:`~diffvos.runtime.features.Features` forks per
session, so sessions on different threads never share a context. The context is created on the
first ``infer`` (the runtime's own, unforked engine costs no device memory unless it is run).

``infer`` copies the input into the pinned buffer, enqueues host-to-device copy, execution and
device-to-host copies on the stream, synchronises once, and returns *views* of the pinned output
buffers: no per-call output copy. A returned array is valid until the next ``infer`` of the same
engine; a caller that keeps it copies it.

No CUDA context is pushed: the CUDA runtime uses the device's primary context, made current in
each calling thread by ``cudaSetDevice`` (pycuda's pushed context made Python abort at exit).
Written against the TensorRT 10/11 API (:mod:`diffvos.runtime.trt_api`); a plan built by another
TensorRT version or for another GPU is refused with the command that rebuilds it. ``tensorrt`` and
cuda-python are imported only when :class:`TrtPlanLoader` is called (tests inject both).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from diffvos.bundle import FEATURES_GRAPH, Manifest, TensorRTPlan, sha256_file
from diffvos.errors import BackendError, BundleError, InputError
from diffvos.runtime.cuda_device import Cuda, shared_cuda
from diffvos.runtime.engine import EngineBase, TensorMeta
from diffvos.runtime.trt_api import (
    create,
    engine_device_memory,
    import_trt,
    logged,
    make_logger,
)

PROVIDER = "TensorRT (native)"
Shape = tuple[int, ...]


def rebuild_hint(bundle: str | Path) -> str:
    return f"rebuild it on this machine with: diffvos build-engine --bundle {bundle}"


def check_plan_facts(plan: TensorRTPlan | None, trt_version: str, gpu: dict[str, Any], bundle: str | Path,
                     graph: str = FEATURES_GRAPH) -> None:
    """Refuse a plan built by another TensorRT version or for another GPU architecture."""
    if plan is None:
        raise BundleError(f"bundle has no TensorRT engine for graph '{graph}'; "
                          f"{rebuild_hint(bundle).replace('rebuild', 'build')}", bundle)
    if plan.trt_version != trt_version:
        raise BundleError(f"engine of '{graph}' was built with TensorRT {plan.trt_version}, this machine has TensorRT "
                          f"{trt_version}; " + rebuild_hint(bundle), bundle)
    if plan.compute_capability != gpu["compute_capability"]:
        raise BundleError(f"engine of '{graph}' was built for {plan.gpu} (compute capability "
                          f"{plan.compute_capability}), this GPU is {gpu['gpu']} (compute capability "
                          f"{gpu['compute_capability']}); " + rebuild_hint(bundle), bundle)


def _volume(shape: Shape) -> int:
    return int(np.prod([int(d) for d in shape])) if len(shape) else 1


class TrtPlan:
    """One deserialised engine (single input, any outputs), shared by the engines forked from it."""

    def __init__(self, plan: bytes, trt: Any, cuda: Cuda, source: str | Path = "engine", profile: int = 0) -> None:
        self.trt, self.cuda, self.source, self.profile = trt, cuda, str(source), profile
        cuda.use()
        self.logger = make_logger(trt)
        self.runtime = create(trt, "Runtime", self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            said = logged(self.logger)
            raise BundleError("TensorRT could not deserialise the engine (corrupt, or built for another "
                              f"TensorRT/GPU{': ' + said if said else ''}); " + rebuild_hint(Path(source).parent),
                              source)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if len(self.input_names) != 1:
            raise BundleError(f"engine has {len(self.input_names)} inputs, a bundle graph has one", source)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    def input_range(self) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) of the input in the engine's profile; all equal for a static engine."""
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        if all(d >= 0 for d in shape):
            return shape, shape, shape
        lo, opt, hi = self.engine.get_tensor_profile_shape(self.input_name, self.profile)
        return tuple(int(d) for d in lo), tuple(int(d) for d in opt), tuple(int(d) for d in hi)

    def meta(self, name: str) -> TensorMeta:
        """A tensor as the engine declares it; a dynamic dimension is '?'."""
        shape = tuple(int(d) if int(d) >= 0 else "?" for d in self.engine.get_tensor_shape(name))
        return TensorMeta(name, shape, self.dtypes[name])

    @property
    def context_bytes(self) -> int | None:
        """Device memory one execution context allocates for activations."""
        return engine_device_memory(self.engine)


class TrtEngine(EngineBase):
    """One stream's execution of a :class:`TrtPlan`: context, stream and buffers of its own."""

    def __init__(self, plan: TrtPlan) -> None:
        super().__init__()
        self.plan, self.cuda = plan, plan.cuda
        self._lock = threading.Lock()  # one stream per engine; a second thread waits instead of corrupting it
        self._context: Any = None
        self._stream: int | None = None
        self._device: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._shape: Shape | None = None
        self.max_shapes: dict[str, Shape] = {}

    def fork(self) -> TrtEngine:
        """Another stream on the same deserialised engine (its own context, stream and buffers)."""
        return TrtEngine(self.plan)

    def _start(self) -> None:
        """Context, stream and buffers at the profile's maximum, bound once by address."""
        plan, cuda = self.plan, self.cuda
        cuda.use()
        context = plan.engine.create_execution_context()
        if context is None:
            said = logged(plan.logger) or "out of device memory?"
            raise BackendError(f"TensorRT could not create an execution context ({said}); the profile's maximum "
                               "sets its size: rebuild with a smaller --max-size (diffvos build-engine)", plan.source)
        hi = plan.input_range()[2]
        context.set_input_shape(plan.input_name, hi)
        shapes = {plan.input_name: hi}
        for out in plan.output_names:
            shape = tuple(int(d) for d in context.get_tensor_shape(out))
            if any(d < 0 for d in shape):
                raise BundleError(f"engine cannot infer the shape of output '{out}' from its input", plan.source)
            shapes[out] = shape
        stream = cuda.stream_create()
        try:
            for name, shape in shapes.items():
                nbytes = max(_volume(shape), 1) * plan.dtypes[name].itemsize
                self._device[name] = cuda.malloc(nbytes)
                self._host[name] = cuda.pinned_empty(_volume(shape), plan.dtypes[name])
                context.set_tensor_address(name, self._device[name])
        except Exception:
            self._release(stream)
            raise
        self._context, self._stream, self.max_shapes, self._shape = context, stream, shapes, hi

    def set_shape(self, shape: Shape) -> dict[str, Shape]:
        """Select the input shape (checked against the profile); returns the output shapes."""
        lo, _, hi = self.plan.input_range()
        if len(shape) != len(hi) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"input shape {list(shape)} is outside the engine's profile {list(lo)} .. {list(hi)}; "
                             "rebuild with a wider range (diffvos build-engine --max-size HxW)")
        if shape != self._shape:
            if not self._context.set_input_shape(self.plan.input_name, shape):
                raise InputError(f"TensorRT refused input shape {list(shape)}", self.plan.source)
            self._shape = shape
        return {o: tuple(int(d) for d in self._context.get_tensor_shape(o)) for o in self.plan.output_names}

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.plan.input_name
        x = feed.get(name)
        if x is None:
            raise InputError(f"engine input is '{name}', got {sorted(feed)}")
        x = np.asarray(x)
        with self._lock:
            if self._context is None:
                self._start()
            cuda, stream = self.cuda, self._stream
            cuda.use()  # this thread's current device (its primary context)
            out_shapes = self.set_shape(tuple(x.shape))
            host_in = self._host[name][: x.size].reshape(x.shape)
            np.copyto(host_in, x, casting="same_kind")
            cuda.htod_async(self._device[name], host_in, stream)
            if not self._context.execute_async_v3(stream):
                raise BackendError(f"TensorRT execution failed ({logged(self.plan.logger) or 'no reason logged'})",
                                   self.plan.source)
            results = {}
            for out, shape in out_shapes.items():
                view = self._host[out][: _volume(shape)].reshape(shape)
                cuda.dtoh_async(view, self._device[out], stream)
                results[out] = view
            cuda.stream_sync(stream)
        return results

    @property
    def inputs(self) -> tuple[TensorMeta, ...]:
        return tuple(self.plan.meta(n) for n in self.plan.input_names)

    @property
    def outputs(self) -> tuple[TensorMeta, ...]:
        return tuple(self.plan.meta(n) for n in self.plan.output_names)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def providers(self) -> list[str]:
        return [PROVIDER]

    @property
    def device_memory_bytes(self) -> int | None:
        """This engine's context activations plus its I/O buffers (0 before its first infer)."""
        if self._context is None:
            return 0
        buffers = sum(_volume(s) * self.plan.dtypes[n].itemsize for n, s in self.max_shapes.items())
        return (self.plan.context_bytes or 0) + buffers

    def _release(self, stream: int | None) -> None:
        for ptr in self._device.values():
            self.cuda.free(ptr)
        self._device.clear()
        self._host.clear()  # pinned memory is freed when the last view of it goes
        if stream is not None:
            self.cuda.stream_destroy(stream)

    def close(self) -> None:
        with self._lock:
            if self._context is not None:
                self.cuda.use()
                self._release(self._stream)
            self._context, self._stream, self._shape = None, None, None


@dataclass
class TrtPlanLoader:
    """Lazy loader of a :class:`TrtEngine`: checks the bundle's plan for ``graph`` against this
    machine, then deserialises it."""

    bundle: Path
    manifest: Manifest
    graph: str = FEATURES_GRAPH
    device: int = 0
    trt: ModuleType | None = field(default=None, repr=False)  # injected tensorrt (tests)
    cuda: Cuda | None = field(default=None, repr=False)  # injected adapter, e.g. over a fake cuda-python (tests)

    def __call__(self) -> TrtEngine:
        bundle = Path(self.bundle)
        trt = self.trt or import_trt()
        cuda = self.cuda or shared_cuda(self.device)
        gpu = cuda.device_facts(self.device)
        plan = self.manifest.tensorrt.get(self.graph)
        check_plan_facts(plan, trt.__version__, gpu, bundle, self.graph)
        plan_path = bundle / plan.plan
        if not plan_path.is_file():
            raise BundleError("TensorRT plan listed in the manifest is missing; " + rebuild_hint(bundle), plan_path)
        if plan.sha256 and sha256_file(plan_path) != plan.sha256:
            raise BundleError("TensorRT plan is corrupted (sha256 differs from the manifest); " + rebuild_hint(bundle),
                              plan_path)
        return TrtEngine(TrtPlan(plan_path.read_bytes(), trt, cuda, source=plan_path))
