"""The graphs a runtime builds for itself (propagation, first frame, input preparation, device
copies): built once per spec, shared by every session of the runtime, and run by the provider
the feature graph runs on.

They are ONNX Runtime engines made by the same loader as the bundle's graphs
(:class:`~diffvos.runtime.ort_engine.OrtLoader`: provider chain, fallback note, GPU options) and
the runtime's thread plan (:mod:`diffvos.runtime.threads`: intra-op threads, no spinning), so
``--threads`` and the provider checks cover them too. Which provider: the CPU when the feature
graph runs on the CPU, else the CUDA provider with TF32 off. Not TensorRT, even when the feature
graph runs under it: TensorRT builds float32 products with TF32 by default (10-bit mantissa), and
ONNX Runtime's TensorRT provider has no option to turn it off; cosines moved by ~1e-3 would flip
many near-tie top-k selections (issue 10 notes, section 6). Both providers share the device, so
the feature map a TensorRT engine leaves there is bound as it is.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from diffvos.runtime.device import DeviceIO
from diffvos.runtime.ort_engine import OrtEngine, OrtLoader
from diffvos.runtime.ort_options import CPU, CUDA, GpuOptions
from diffvos.runtime.threads import ThreadPlan

GPU_GRAPH_OPTIONS = {CUDA: {"use_tf32": "0"}}  # exact float32 products (see the module docstring)


def graph_backend(feature_provider: str) -> str:
    """The ONNX Runtime backend of the runtime's own graphs, given the provider of the feature graph."""
    return "cpu" if feature_provider == CPU else "cuda"


class GraphEngines:
    """The runtime's own graphs, one engine per (kind, spec), built on first use (thread-safe).

    ``loader`` (tests): makes an engine from (model bytes, backend, thread plan); default
    :class:`OrtLoader`.
    """

    def __init__(self, backend: str, plan: ThreadPlan, device_id: int = 0,
                 loader: Callable[[bytes, str, ThreadPlan], OrtEngine] | None = None) -> None:
        self.backend, self.plan, self.device_id = backend, plan, device_id
        self._loader = loader or self._ort_loader
        self._engines: dict[tuple[str, Hashable], OrtEngine] = {}
        self._lock = threading.Lock()
        self._small = ThreadPlan(intra_op=1, blas_threads=plan.blas_threads, spinning=False)  # copies, tiny graphs

    def _ort_loader(self, model: bytes, backend: str, plan: ThreadPlan) -> OrtEngine:
        gpu = GpuOptions(graph_sha256=hashlib.sha256(model).hexdigest(), device=self.device_id,
                         extra=GPU_GRAPH_OPTIONS)
        return OrtLoader(Path("<diffvos graph>"), backend=backend, gpu=gpu, plan=plan, model=model)()

    def get(self, kind: str, key: Hashable, build: Callable[[], Any], small: bool = False) -> OrtEngine:
        """The engine of graph ``kind`` for ``key``, built by ``build()`` (an ``onnx.ModelProto``) once.
        A built engine is returned without the lock, so the per-frame lookups (the copy engines) of
        running streams never wait for another session's graph being built."""
        engine = self._engines.get((kind, key))
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get((kind, key))
            if engine is None:
                model = build().SerializeToString()
                engine = self._loader(model, self.backend, self._small if small else self.plan)
                self._engines[(kind, key)] = engine
            return engine

    def copier(self, dtype: Any) -> OrtEngine:
        from diffvos.runtime.onnx_build import copy_model

        dtype = np.dtype(dtype)
        return self.get("copy", dtype.str, lambda: copy_model(dtype), small=True)

    def propagation(self, spec: Any) -> OrtEngine:
        from diffvos.runtime.propagation_graph import propagation_model

        return self.get("propagation", spec, lambda: propagation_model(spec))

    def remember(self, spec: Any) -> OrtEngine:
        from diffvos.runtime.propagation_graph import remember_model

        return self.get("remember", spec, lambda: remember_model(spec), small=True)

    def input(self, spec: Any) -> OrtEngine:
        from diffvos.runtime.input_graph import input_model

        return self.get("input", spec, lambda: input_model(spec), small=True)

    def device_io(self) -> DeviceIO:
        """A transfer counter for one stream, on the device these engines run on."""
        device, device_id = self.copier(np.float32).device
        return DeviceIO(device, device_id, copier=self.copier)

    @property
    def notes(self) -> list[str]:
        with self._lock:
            return sorted({e.note for e in self._engines.values() if e.note})

    @property
    def built(self) -> dict[str, int]:
        """How many engines of each kind exist (benchmarks, tests)."""
        with self._lock:
            counts: dict[str, int] = {}
            for kind, _ in self._engines:
                counts[kind] = counts.get(kind, 0) + 1
            return counts
