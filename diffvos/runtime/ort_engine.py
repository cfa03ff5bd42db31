"""ONNX Runtime engines, with the truth about which execution provider really runs.

onnxruntime-gpu lists the TensorRT and CUDA providers even on a machine without a GPU; the
TensorRT provider then raises at session creation and the CUDA provider silently falls back to
the CPU. So the loader tries each candidate chain in order, asks the session which providers it
really holds (``session.get_providers()``) and records one line for the user when the GPU was
wanted but the CPU is what runs.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from diffvos.config import ORT_PROVIDERS
from diffvos.errors import BackendError
from diffvos.runtime.engine import EngineBase, TensorMeta

ORT_BACKENDS = ("auto", "tensorrt", "cuda", "cpu")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def candidate_chains(backend: str, available: list[str]) -> list[list[str]]:
    """Provider chains to try for ``backend``, best first, each ending on the CPU."""
    if backend not in ORT_BACKENDS:
        raise BackendError(f"ONNX Runtime backend must be one of {', '.join(ORT_BACKENDS)}, not {backend!r}")
    order = ["tensorrt", "cuda"] if backend == "auto" else ([backend] if backend != "cpu" else [])
    chains = []
    for name in order:
        if ORT_PROVIDERS[name] in available:
            chains.append([ORT_PROVIDERS[n] for n in order[order.index(name):]] + [ORT_PROVIDERS["cpu"]])
    chains.append([ORT_PROVIDERS["cpu"]])
    return chains


def provider_options(provider: str, cache_dir: Path | None, fp16: bool = False) -> dict[str, Any]:
    """Options for a provider: the TensorRT EP gets an engine cache so it builds once per GPU."""
    if provider == ORT_PROVIDERS["tensorrt"] and cache_dir is not None:
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_fp16_enable": bool(fp16),
        }
    return {}


class OrtEngine(EngineBase):
    """One ``onnxruntime.InferenceSession``; ``run`` is thread-safe, so forks share it."""

    def __init__(self, session: Any, note: str | None = None) -> None:
        super().__init__(note)
        self.session = session
        self._providers = list(session.get_providers())
        self._inputs = tuple(_meta(a) for a in session.get_inputs())
        self._outputs = tuple(_meta(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> tuple[TensorMeta, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorMeta, ...]:
        return self._outputs

    @property
    def provider(self) -> str:
        return self._providers[0]

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self._output_names, dict(feed))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            if isinstance(exc, MemoryError):
                raise
            raise BackendError(f"ONNX Runtime failed to run the graph: {str(exc).splitlines()[0]}") from exc
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self.session = None


def _meta(arg: Any) -> TensorMeta:
    shape = tuple(d if isinstance(d, (int, str)) else "?" for d in (arg.shape or ()))
    return TensorMeta(arg.name, shape, np.dtype(_ORT_TYPES.get(getattr(arg, "type", ""), np.float32)))


@dataclass
class OrtLoader:
    """Lazy loader of an :class:`OrtEngine`: the best provider chain for ``backend`` that starts."""

    path: Path
    backend: str = "auto"
    threads: int = 0
    cache_dir: Path | None = None  # TensorRT EP engine cache
    fp16: bool = False
    ort: ModuleType | None = field(default=None, repr=False)  # injected onnxruntime (tests)

    def __call__(self) -> OrtEngine:
        ort = self.ort
        if ort is None:
            import onnxruntime as ort
        ort.set_default_logger_severity(4)  # its own fallback errors are replaced by our one line
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        chains = candidate_chains(self.backend, ort.get_available_providers())
        desired = chains[0][0]
        last_error: Exception | None = None
        for chain in chains:
            opts = [provider_options(p, self.cache_dir, self.fp16) for p in chain]
            try:
                # onnxruntime prints its own provider fallback to stdout; we report it in one line instead
                with contextlib.redirect_stdout(io.StringIO()):
                    session = ort.InferenceSession(str(self.path), options, providers=chain, provider_options=opts)
            except Exception as exc:  # noqa: BLE001 - a provider that cannot start: try the next chain
                last_error = exc
                continue
            active = session.get_providers()[0]
            note = None
            if active != desired:
                note = (f"diffvos: {desired} is not usable here (no GPU, or CUDA/TensorRT libraries missing); "
                        f"running on {active}")
            return OrtEngine(session, note)
        raise BackendError(f"ONNX Runtime could not load the graph: {str(last_error).splitlines()[0]}", self.path)
