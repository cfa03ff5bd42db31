"""ONNX Runtime engines, with the truth about which execution provider really runs, and why.

onnxruntime-gpu lists the TensorRT and CUDA providers even where they cannot start. Left alone,
ONNX Runtime hides that three ways: a provider that fails at session creation makes the Python
API recreate the session on CUDA/CPU with *default* options; the CUDA provider that cannot load
its libraries is dropped without any exception; and a TensorRT engine that fails to build at the
first ``run()`` (a dynamic graph builds there) makes ``run`` recreate the session on the fallback
providers. So the loader turns ONNX Runtime's fallback off (``enable_fallback=0`` and
``disable_fallback()``), tries each provider chain itself with the options the graph needs
(:mod:`diffvos.runtime.ort_options`), captures what the providers print
(:mod:`diffvos.runtime.ort_log`), reads ``get_providers()`` after creation and again after the
first run, and records one line for the user naming the real cause when the provider asked for is
not the one running. ``session.disable_cpu_ep_fallback`` is deliberately not set: ONNX Runtime
places shape arithmetic on the CPU even under the GPU providers, and that must keep working.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from diffvos.config import ORT_PROVIDERS
from diffvos.errors import BackendError
from diffvos.runtime.caches import libnvinfer_version
from diffvos.runtime.engine import EngineBase, TensorMeta
from diffvos.runtime.ort_log import (
    Captured,
    capture_native_output,
    first_line,
    provider_messages,
)
from diffvos.runtime.ort_options import (
    CPU,
    CUDA,
    TENSORRT,
    GpuOptions,
    engine_facts,
    provider_options,
)
from diffvos.runtime.threads import ThreadPlan, plan_threads

ORT_BACKENDS = ("auto", "tensorrt", "cuda", "cpu")
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,  # -> numpy
             "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}
_SHORT = {TENSORRT: "TensorRT EP", CUDA: "CUDA EP", CPU: "CPU"}
_MAX_CAUSE = 400  # characters of one provider's cause in the note


def candidate_chains(backend: str, available: list[str]) -> list[list[str]]:
    """Provider chains to try for ``backend``, best first, each ending on the CPU."""
    if backend not in ORT_BACKENDS:
        raise BackendError(f"ONNX Runtime backend must be one of {', '.join(ORT_BACKENDS)}, not {backend!r}")
    order = ["tensorrt", "cuda"] if backend == "auto" else ([backend] if backend != "cpu" else [])
    chains = []
    for name in order:
        if ORT_PROVIDERS[name] in available:
            chains.append([ORT_PROVIDERS[n] for n in order[order.index(name):]] + [CPU])
    chains.append([CPU])
    return chains


def is_provider_failure(exc: BaseException) -> bool:
    """ONNX Runtime's ``EPFail``: an execution provider failed (e.g. a TensorRT engine build)."""
    return type(exc).__name__ == "EPFail"


class OrtEngine(EngineBase):
    """One ``onnxruntime.InferenceSession``; ``run`` is thread-safe, so forks share it.

    ``fallback(provider, cause)`` (from the loader) opens the next provider chain when the first
    run fails inside a GPU provider; it returns ``(session, note)`` or None when none is left. The
    session may thus be replaced at the first run: read ``session`` after it, not before.
    """

    def __init__(self, session: Any, note: str | None = None, *,
                 fallback: Callable[[str, str], tuple[Any, str | None] | None] | None = None,
                 device_id: int = 0) -> None:
        super().__init__(note)
        self._device_id = device_id
        self._adopt(session)
        self._fallback = fallback
        self._verified = self._providers[0] == CPU  # the CPU cannot fall back: nothing to check
        self._first = threading.Lock()

    def _adopt(self, session: Any) -> None:
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

    def fork(self) -> OrtEngine:
        """ONNX Runtime's ``run`` is thread-safe: every stream shares this engine."""
        return self

    # -- device-resident IO (the device step, diffvos.runtime.device_step) ---------------------------
    @property
    def device(self) -> tuple[str, int]:
        """Where the running provider keeps tensors, as IO binding names it: ("cpu", 0) on the CPU,
        ("cuda", id) under the CUDA or TensorRT provider."""
        return ("cpu", 0) if self.provider == CPU else ("cuda", self._device_id)

    def io_binding(self) -> Any:
        """A new ``onnxruntime.IOBinding`` on the current session (make it after the first run on a
        GPU provider, or per run: the session may be replaced at the first run)."""
        return self.session.io_binding()

    def run_binding(self, binding: Any) -> None:
        """``run_with_iobinding``. The first run on a GPU provider is checked as :meth:`infer`'s
        (providers read again after it), but a provider failure raises :class:`BackendError` instead
        of moving on: buffers bound on a device cannot follow a fallback."""
        try:
            if self._verified:
                self.session.run_with_iobinding(binding)
                return
            with self._first, capture_native_output() as said:
                self.session.run_with_iobinding(binding)
            self._check_after_run(said)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise BackendError(f"ONNX Runtime failed to run the graph on {self.provider}: {first_line(exc)}") from exc

    def infer_on_device(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`infer` with inputs and outputs in device memory: ``feed`` maps input names to
        ``OrtValue`` objects on :attr:`device`; the outputs are ``OrtValue`` objects allocated there
        and never copied to the host. Observers get host copies (made only when one is registered).
        The first run on a GPU provider (where it may fall back) goes through the host once."""
        if not self._verified:
            import onnxruntime as ort

            host = self._run({name: value.numpy() for name, value in feed.items()})
            outputs = {name: ort.OrtValue.ortvalue_from_numpy(v, *self.device) for name, v in host.items()}
        else:
            binding = self.session.io_binding()
            for name, value in feed.items():
                binding.bind_ortvalue_input(name, value)
            for name in self._output_names:
                binding.bind_output(name, *self.device)
            self.run_binding(binding)
            outputs = dict(zip(self._output_names, binding.get_outputs()))
        if self._observers:
            host_feed = {name: value.numpy() for name, value in feed.items()}
            host_out = {name: value.numpy() for name, value in outputs.items()}
            for observer in tuple(self._observers):
                observer(host_feed, host_out)
        return outputs

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._verified:
            return self._first_run(feed)
        try:
            values = self.session.run(self._output_names, dict(feed))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise BackendError(f"ONNX Runtime failed to run the graph on {self.provider}: {first_line(exc)}") from exc
        return dict(zip(self._output_names, values))

    def _first_run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The first run on a GPU provider (where a dynamic TensorRT engine is built): its output is
        captured, a provider failure moves to the next chain with the cause in the note, and the
        providers are read again afterwards."""
        with self._first:
            while not self._verified:
                error: Exception | None = None
                with capture_native_output() as said:
                    try:
                        values = self.session.run(self._output_names, dict(feed))
                    except MemoryError:
                        raise
                    except Exception as exc:  # noqa: BLE001
                        error = exc
                if error is None:
                    self._check_after_run(said)
                    return dict(zip(self._output_names, values))
                cause = _cause(said, error)
                nxt = self._fallback(self.provider, cause) if self._fallback and is_provider_failure(error) else None
                if nxt is None:
                    raise BackendError(f"ONNX Runtime failed to run the graph on {self.provider}: {cause}") from error
                session, self._note = nxt
                self._adopt(session)
                self._verified = self.provider == CPU
        return self._run(feed)

    def _check_after_run(self, said: Captured) -> None:
        now = list(self.session.get_providers())
        if now != self._providers:  # ONNX Runtime changed providers during the run
            cause = "; ".join(provider_messages(said.text)) or "no reason printed"
            self._note = (f"diffvos: {self._providers[0]} stopped at the first run ({cause[:_MAX_CAUSE]}); "
                          f"running on {now[0]}")
            self._providers = now
        self._verified = True

    def close(self) -> None:
        self.session = None


def _meta(arg: Any) -> TensorMeta:
    shape = tuple(d if isinstance(d, (int, str)) else "?" for d in (arg.shape or ()))
    return TensorMeta(arg.name, shape, np.dtype(ORT_TYPES.get(getattr(arg, "type", ""), np.float32)))


def _cause(said: Captured, error: BaseException | None) -> str:
    messages = provider_messages(said.text)
    return "; ".join(messages) if messages else (first_line(error) if error is not None else "")


@dataclass
class OrtLoader:
    """Lazy loader of an :class:`OrtEngine`: the best provider chain for ``backend`` that starts,
    with the provider options ``gpu`` describes."""

    path: Path
    backend: str = "auto"
    threads: int = 0
    gpu: GpuOptions = field(default_factory=GpuOptions)
    ort: ModuleType | None = field(default=None, repr=False)  # injected onnxruntime (tests)
    cuda: Any = field(default=None, repr=False)  # injected diffvos.runtime.cuda_device.Cuda (cache key)
    nvinfer: Callable[[], str | None] = field(default=libnvinfer_version, repr=False)  # libnvinfer's version probe
    plan: ThreadPlan | None = None  # thread counts (default: diffvos.runtime.threads' choice for ``threads``)
    model: bytes | None = field(default=None, repr=False)  # the graph itself, for graphs built in memory

    def __call__(self) -> OrtEngine:
        ort = self.ort
        if ort is None:
            import onnxruntime as ort
        ort.set_default_logger_severity(3)  # errors: captured while a provider starts, named in the note
        opener = _ChainOpener(self, ort, candidate_chains(self.backend, ort.get_available_providers()))
        session, note = opener.open_next()
        return OrtEngine(session, note, fallback=opener.after_failure, device_id=self.gpu.device)

    def session_options(self, ort: ModuleType) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        (self.plan or plan_threads(self.threads)).configure_ort(options)
        return options

    def tensorrt_cache(self, ort: ModuleType) -> Path | None:
        """The TensorRT EP's engine/timing cache folder in the user cache, keyed by the ORT and
        TensorRT versions, the GPU, the graph and the build options (None: caching off or not
        writable, said on stderr)."""
        from diffvos.runtime.caches import trt_cache_dir
        from diffvos.runtime.cuda_device import Cuda, CudaError, gpu_summary

        trt_version = self.nvinfer() if self.gpu.cache else None
        if trt_version is None:
            return None  # no libnvinfer: the TensorRT EP cannot start, so no cache folder is made for it

        try:
            devices = gpu_summary(self.cuda or Cuda(device=self.gpu.device)).get("devices", [])
        except CudaError:  # cuda-python missing: the key names no GPU (ONNX Runtime checks its engines too)
            devices = []
        device = devices[self.gpu.device] if self.gpu.device < len(devices) else None
        facts = engine_facts(self.gpu, getattr(ort, "__version__", "?"), trt_version, device)
        try:
            return trt_cache_dir(facts, self.gpu.cache_root)
        except OSError as exc:
            print(f"diffvos: TensorRT engine cache off ({exc}); set DIFFVOS_CACHE to a writable folder",
                  file=sys.stderr)
            return None


class _ChainOpener:
    """Opens the loader's provider chains in order, remembering why each GPU provider did not start."""

    def __init__(self, loader: OrtLoader, ort: ModuleType, chains: list[list[str]]) -> None:
        self.loader, self.ort, self.chains = loader, ort, chains
        self.desired = chains[0][0]
        self.causes: dict[str, str] = {}
        self.index = 0
        self.options = loader.session_options(ort)
        self._cache: Path | None = None
        self._preloaded = False

    def open_next(self) -> tuple[Any, str | None]:
        last: Exception | None = None
        while self.index < len(self.chains):
            chain = self.chains[self.index]
            self.index += 1
            gpu = chain[0] != CPU
            if gpu:
                self._preload_cuda_libraries()
            if TENSORRT in chain and self._cache is None:
                self._cache = self.loader.tensorrt_cache(self.ort)
            opts = [provider_options(p, self.loader.gpu, self._cache) for p in chain]
            error: Exception | None = None
            with capture_native_output() if gpu else contextlib.nullcontext(Captured()) as said:
                try:
                    source = self.loader.model if self.loader.model is not None else str(self.loader.path)
                    session = self.ort.InferenceSession(source, self.options, providers=chain,
                                                        provider_options=opts, enable_fallback=0)
                except Exception as exc:  # noqa: BLE001 - a provider that cannot start: try the next chain
                    error = exc
            if error is not None:
                last = error
                self.causes.setdefault(chain[0], _cause(said, error))
                continue
            active = list(session.get_providers())
            for p in chain:
                if p not in active and p != CPU:  # dropped without an exception (the CUDA EP does that)
                    self.causes.setdefault(p, _cause(said, None) or "dropped by ONNX Runtime without a reason")
            if hasattr(session, "disable_fallback"):
                session.disable_fallback()
            return session, self.note(active[0])
        raise BackendError(f"ONNX Runtime could not load the graph: {first_line(last) if last else 'no provider'}",
                           self.loader.path)

    def after_failure(self, provider: str, cause: str) -> tuple[Any, str | None] | None:
        """The next chain after ``provider`` failed at the first run (None when none is left)."""
        self.causes[provider] = cause
        while self.index < len(self.chains) and provider in self.chains[self.index]:
            self.index += 1
        if self.index >= len(self.chains):
            return None
        return self.open_next()

    def note(self, active: str) -> str | None:
        if active == self.desired:
            return None
        why = "; ".join(f"{_SHORT.get(p, p)}: {c[:_MAX_CAUSE]}" for p, c in self.causes.items() if c) or \
            "no GPU, or CUDA/TensorRT libraries missing"
        if self.loader.backend == "auto":  # information: nothing was asked for (said once per run)
            return f"note: running on {active}: {self.desired} cannot start here ({why})"
        return (f"warning: --backend {self.loader.backend} asked for {self.desired}, which is not usable here "
                f"({why}); running on {active}")

    def _preload_cuda_libraries(self) -> None:
        """ONNX Runtime >= 1.21 finds CUDA/cuDNN from the nvidia-* wheels (the cuda12/cuda13 extras)
        only when asked to preload them; done once, only when those wheels are installed."""
        if self._preloaded:
            return
        self._preloaded = True
        if hasattr(self.ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
            with capture_native_output():
                try:
                    self.ort.preload_dlls()
                except Exception:  # noqa: BLE001 - the provider's own start reports what is missing
                    pass
