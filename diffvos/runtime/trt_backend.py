"""Native TensorRT backend (``--backend trt``): a bundle's serialized plan run with pycuda.

Written against the TensorRT 10/11 Python API (named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Device and pinned host buffers are allocated
once, at the optimisation profile's maximum shape, and reused for every frame. An engine built
by another TensorRT version or for another GPU is refused with the command that rebuilds it.

``tensorrt`` and ``pycuda`` are imported only when a session is opened; tests pass fakes.
:class:`TrtSession` mimics the part of ``onnxruntime.InferenceSession`` the runtime uses
(``run``, ``get_inputs``, ``get_outputs``, ``get_providers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffvos.runtime.bundle import FEATURES_GRAPH, Manifest, read_manifest, sha256_file
from diffvos.runtime.errors import BundleError, InputError

TRT_KEY = "tensorrt"  # Manifest.extra[TRT_KEY][graph] = plan facts, see engine_build.plan_facts


def rebuild_hint(bundle: str | Path) -> str:
    return f"rebuild it on this machine with: diffvos build-engine --bundle {bundle}"


@dataclass
class IOName:
    """What ``session.get_inputs()[i]`` returns in ONNX Runtime: ``.name`` (and shape, type)."""

    name: str
    shape: list[Any]
    type: str


def import_trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BundleError(f"the trt backend needs the TensorRT Python package ({exc}); "
                          "install it (pip install 'diffvos[trt]') or use --backend tensorrt/cuda/cpu") from exc
    return trt


def import_cuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BundleError(f"the trt backend needs pycuda ({exc}); install it (pip install pycuda)") from exc
    return cuda


def gpu_facts(cuda: Any, device: int = 0) -> dict[str, str]:
    """Name and compute capability of a CUDA device, through pycuda."""
    cuda.init()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return {"gpu": dev.name(), "compute_capability": f"{major}.{minor}"}


def check_plan_facts(facts: dict[str, Any] | None, trt_version: str, gpu: dict[str, str], bundle: str | Path) -> None:
    """Refuse a plan built by another TensorRT version or for another GPU architecture."""
    if not facts:
        raise BundleError(f"bundle has no TensorRT engine; {rebuild_hint(bundle).replace('rebuild', 'build')}", bundle)
    built = facts.get("trt_version")
    if built != trt_version:
        raise BundleError(f"engine was built with TensorRT {built}, this machine has TensorRT {trt_version}; "
                          + rebuild_hint(bundle), bundle)
    cc = facts.get("compute_capability")
    if cc != gpu["compute_capability"]:
        raise BundleError(f"engine was built for {facts.get('gpu')} (compute capability {cc}), this GPU is "
                          f"{gpu['gpu']} (compute capability {gpu['compute_capability']}); " + rebuild_hint(bundle), bundle)


def _volume(shape) -> int:
    return int(np.prod([int(d) for d in shape])) if len(shape) else 1


class TrtSession:
    """One deserialised engine with its context, stream and buffers (single input, any outputs)."""

    def __init__(self, plan: bytes, trt: Any, cuda: Any, source: str | Path = "engine", profile: int = 0) -> None:
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

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
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
            raise BundleError("TensorRT execution failed", self.source)
        wanted = output_names or self.output_names
        results = []
        for out in wanted:
            host_out = self.host[out][: _volume(out_shapes[out])].reshape(out_shapes[out])
            cuda.memcpy_dtoh_async(host_out, self.device[out], self.stream)
            results.append(host_out)
        self.stream.synchronize()
        return [r.astype(np.float32, copy=True) for r in results]

    def get_inputs(self) -> list[IOName]:
        return [IOName(n, list(self.max_shapes[n]), str(self.dtypes[n])) for n in self.input_names]

    def get_outputs(self) -> list[IOName]:
        return [IOName(n, list(self.max_shapes[n]), str(self.dtypes[n])) for n in self.output_names]

    def get_providers(self) -> list[str]:
        return ["TensorRT (native)"]


def open_trt_session(bundle: str | Path, graph: str = FEATURES_GRAPH, manifest: Manifest | None = None,
                     trt: Any = None, cuda: Any = None, device: int = 0) -> TrtSession:
    """Check the bundle's plan against this machine, then deserialise it."""
    bundle = Path(bundle)
    manifest = manifest or read_manifest(bundle)
    trt = trt or import_trt()
    cuda = cuda or import_cuda()
    gpu = gpu_facts(cuda, device)
    facts = (manifest.extra.get(TRT_KEY) or {}).get(graph)
    check_plan_facts(facts, trt.__version__, gpu, bundle)
    plan_path = bundle / facts["plan"]
    if not plan_path.is_file():
        raise BundleError("TensorRT plan listed in the manifest is missing; " + rebuild_hint(bundle), plan_path)
    if facts.get("sha256") and sha256_file(plan_path) != facts["sha256"]:
        raise BundleError("TensorRT plan is corrupted (sha256 differs from the manifest); " + rebuild_hint(bundle), plan_path)
    if not getattr(cuda, "_diffvos_context", None):  # one primary context per process
        cuda._diffvos_context = cuda.Device(device).retain_primary_context()
        cuda._diffvos_context.push()
    return TrtSession(plan_path.read_bytes(), trt, cuda, source=plan_path)
