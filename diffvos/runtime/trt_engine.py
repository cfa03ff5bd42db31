"""Native TensorRT engines (``--backend trt``): a bundle's serialized plan, run with pycuda.

Written against the TensorRT 10/11 Python API (named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Device and pinned host buffers are allocated
once, at the optimisation profile's maximum shape, and reused for every frame. An engine built
by another TensorRT version or for another GPU is refused with the command that rebuilds it.
:class:`TrtEngine` implements the runtime's :class:`~diffvos.runtime.engine.Engine` interface;
``tensorrt`` and ``pycuda`` are imported only when :class:`TrtPlanLoader` is called (tests
inject their own modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from diffvos.bundle import FEATURES_GRAPH, Manifest, TensorRTPlan, sha256_file
from diffvos.errors import BackendError, BundleError, InputError
from diffvos.runtime.engine import EngineBase, TensorMeta

PROVIDER = "TensorRT (native)"
_CONTEXTS: dict[int, Any] = {}  # id(cuda module) -> the primary context pushed for it


def rebuild_hint(bundle: str | Path) -> str:
    return f"rebuild it on this machine with: diffvos build-engine --bundle {bundle}"


def import_trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"the trt backend needs the TensorRT Python package ({exc}); "
                          "install it (pip install 'diffvos[trt]') or use --backend tensorrt/cuda/cpu") from exc
    return trt


def import_cuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendError(f"the trt backend needs pycuda ({exc}); install it (pip install pycuda)") from exc
    return cuda


def gpu_facts(cuda: Any, device: int = 0) -> dict[str, str]:
    """Name and compute capability of a CUDA device, through pycuda."""
    cuda.init()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return {"gpu": dev.name(), "compute_capability": f"{major}.{minor}"}


def check_plan_facts(plan: TensorRTPlan | None, trt_version: str, gpu: dict[str, str], bundle: str | Path) -> None:
    """Refuse a plan built by another TensorRT version or for another GPU architecture."""
    if plan is None:
        raise BundleError(f"bundle has no TensorRT engine; {rebuild_hint(bundle).replace('rebuild', 'build')}", bundle)
    if plan.trt_version != trt_version:
        raise BundleError(f"engine was built with TensorRT {plan.trt_version}, this machine has TensorRT "
                          f"{trt_version}; " + rebuild_hint(bundle), bundle)
    if plan.compute_capability != gpu["compute_capability"]:
        raise BundleError(f"engine was built for {plan.gpu} (compute capability {plan.compute_capability}), this GPU "
                          f"is {gpu['gpu']} (compute capability {gpu['compute_capability']}); " + rebuild_hint(bundle),
                          bundle)


def _volume(shape) -> int:
    return int(np.prod([int(d) for d in shape])) if len(shape) else 1


class TrtEngine(EngineBase):
    """One deserialised engine with its context, stream and buffers (single input, any outputs)."""

    def __init__(self, plan: bytes, trt: Any, cuda: Any, source: str | Path = "engine", profile: int = 0) -> None:
        super().__init__()
        self.trt, self.cuda, self.source = trt, cuda, str(source)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BundleError("TensorRT could not deserialise the engine (corrupt, or built for another "
                              "TensorRT/GPU); " + rebuild_hint(Path(source).parent), source)
        self.context = self.engine.create_execution_context()
        self.profile = profile
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if len(self.input_names) != 1:
            raise BundleError(f"engine has {len(self.input_names)} inputs, a feature graph has one", source)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.max_shapes = self._max_shapes()
        self.stream = cuda.Stream()
        self.device = {n: cuda.mem_alloc(max(_volume(s), 1) * self.dtypes[n].itemsize) for n, s in self.max_shapes.items()}
        self.host = {n: cuda.pagelocked_empty(_volume(s), self.dtypes[n]) for n, s in self.max_shapes.items()}
        for n in names:
            self.context.set_tensor_address(n, int(self.device[n]))
        self._shape: tuple[int, ...] | None = None

    def input_range(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of the input for the engine's profile; all equal for a static engine."""
        name = self.input_names[0]
        shape = tuple(self.engine.get_tensor_shape(name))
        if all(d >= 0 for d in shape):
            return shape, shape, shape
        lo, opt, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        return tuple(lo), tuple(opt), tuple(hi)

    def _max_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's largest shape: outputs are read from the context at the input's maximum."""
        name = self.input_names[0]
        hi = self.input_range()[2]
        self.context.set_input_shape(name, hi)
        shapes = {name: tuple(hi)}
        for out in self.output_names:
            shape = tuple(self.context.get_tensor_shape(out))
            if any(d < 0 for d in shape):
                raise BundleError(f"engine cannot infer the shape of output '{out}' from its input", self.source)
            shapes[out] = shape
        return shapes

    def set_shape(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Select the input shape (checked against the profile); returns the output shapes."""
        lo, _, hi = self.input_range()
        if len(shape) != len(hi) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"input shape {list(shape)} is outside the engine's profile {list(lo)} .. {list(hi)}; "
                             f"rebuild with a wider range (diffvos build-engine)")
        name = self.input_names[0]
        if shape != self._shape:
            if not self.context.set_input_shape(name, shape):
                raise InputError(f"TensorRT refused input shape {list(shape)}", self.source)
            self._shape = shape
        return {o: tuple(self.context.get_tensor_shape(o)) for o in self.output_names}

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self.cuda
        name = self.input_names[0]
        x = feed.get(name)
        if x is None:
            raise InputError(f"engine input is '{name}', got {sorted(feed)}")
        out_shapes = self.set_shape(tuple(x.shape))
        host_in = self.host[name][: x.size].reshape(x.shape)
        np.copyto(host_in, x, casting="same_kind")
        cuda.memcpy_htod_async(self.device[name], host_in, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError("TensorRT execution failed", self.source)
        results = {}
        for out in self.output_names:
            host_out = self.host[out][: _volume(out_shapes[out])].reshape(out_shapes[out])
            cuda.memcpy_dtoh_async(host_out, self.device[out], self.stream)
            results[out] = host_out
        self.stream.synchronize()
        return {name: r.astype(np.float32, copy=True) for name, r in results.items()}

    @property
    def inputs(self) -> tuple[TensorMeta, ...]:
        return tuple(TensorMeta(n, self.max_shapes[n], self.dtypes[n]) for n in self.input_names)

    @property
    def outputs(self) -> tuple[TensorMeta, ...]:
        return tuple(TensorMeta(n, self.max_shapes[n], self.dtypes[n]) for n in self.output_names)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def providers(self) -> list[str]:
        return [PROVIDER]

    def close(self) -> None:
        self.context = None
        self.engine = None


@dataclass
class TrtPlanLoader:
    """Lazy loader of a :class:`TrtEngine`: checks the bundle's plan against this machine, then
    deserialises it."""

    bundle: Path
    manifest: Manifest
    graph: str = FEATURES_GRAPH
    device: int = 0
    trt: ModuleType | None = field(default=None, repr=False)  # injected tensorrt (tests)
    cuda: ModuleType | None = field(default=None, repr=False)  # injected pycuda.driver (tests)

    def __call__(self) -> TrtEngine:
        bundle = Path(self.bundle)
        trt = self.trt or import_trt()
        cuda = self.cuda or import_cuda()
        gpu = gpu_facts(cuda, self.device)
        plan = self.manifest.tensorrt.get(self.graph)
        check_plan_facts(plan, trt.__version__, gpu, bundle)
        plan_path = bundle / plan.plan
        if not plan_path.is_file():
            raise BundleError("TensorRT plan listed in the manifest is missing; " + rebuild_hint(bundle), plan_path)
        if plan.sha256 and sha256_file(plan_path) != plan.sha256:
            raise BundleError("TensorRT plan is corrupted (sha256 differs from the manifest); " + rebuild_hint(bundle),
                              plan_path)
        if id(cuda) not in _CONTEXTS:  # one primary context per process
            _CONTEXTS[id(cuda)] = cuda.Device(self.device).retain_primary_context()
            _CONTEXTS[id(cuda)].push()
        return TrtEngine(plan_path.read_bytes(), trt, cuda, source=plan_path)
