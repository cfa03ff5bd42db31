"""The engine interface: one small protocol for every way a bundle graph is run.

In the style of Polygraphy's runners: an :class:`Engine` knows its inputs and outputs, runs a
feed (``infer``), tells which provider really runs it and is closed when done. Engines are made
by lazy loaders (``OrtLoader``, ``TrtPlanLoader``): cheap objects that describe what to load and
build the engine only when called, so a caller can hold, pass or retry them. Implemented by ONNX
Runtime (:mod:`diffvos.runtime.ort_engine`) and by the native TensorRT runtime
(:mod:`diffvos.runtime.trt_engine`).

Engines with per-stream state (a TensorRT execution context, its stream and buffers) implement
``fork()``: another engine on the same loaded weights for another stream or thread, which
:class:`~diffvos.runtime.features.Features` asks for per session (:func:`fork_engine`); engines
whose ``infer`` is thread-safe (ONNX Runtime) return themselves, as :class:`EngineBase` does.

Observers are the public hook for tools that need a graph's real inputs and outputs (the INT8
calibrator's accuracy report records them this way): ``with engine.observe(fn): ...`` calls
``fn(feed, outputs)`` after every ``infer`` in the block.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Iterator,
    Mapping,
    Protocol,
    Sequence,
    runtime_checkable,
)

import numpy as np

Observer = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], None]


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape (a dimension may be a name: dynamic) and element type of a graph input or output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype


@runtime_checkable
class Engine(Protocol):
    """What the runtime needs from an execution backend."""

    @property
    def inputs(self) -> Sequence[TensorMeta]: ...

    @property
    def outputs(self) -> Sequence[TensorMeta]: ...

    @property
    def provider(self) -> str:
        """The provider that really runs the graph (after any fallback)."""

    @property
    def providers(self) -> list[str]: ...

    @property
    def note(self) -> str | None:
        """One line for the user when the backend asked for is not the one running, else None."""

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def observe(self, observer: Observer) -> contextlib.AbstractContextManager[None]: ...

    def close(self) -> None: ...


class EngineBase:
    """Observer bookkeeping shared by the engines; subclasses implement ``_run``."""

    def __init__(self, note: str | None = None) -> None:
        self._observers: list[Observer] = []
        self._note = note

    @property
    def note(self) -> str | None:
        return self._note

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._run(feed)
        for observer in tuple(self._observers):
            observer(feed, outputs)
        return outputs

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fork(self) -> Engine:
        """An engine for another stream: this one (``infer`` is thread-safe unless a subclass says
        otherwise by overriding this)."""
        return self

    @property
    def device_memory_bytes(self) -> int | None:
        """Device memory this engine itself holds, where its backend reports it (None: unknown)."""
        return None

    @contextlib.contextmanager
    def observe(self, observer: Observer) -> Iterator[None]:
        self._observers.append(observer)
        try:
            yield
        finally:
            self._observers.remove(observer)


class Loader(Protocol):
    """A lazy loader: describes an engine, builds it when called."""

    def __call__(self) -> Engine: ...


def fork_engine(engine: Engine) -> Engine:
    """``engine.fork()`` for engines that offer it (the optional part of the protocol), else the engine."""
    fork = getattr(engine, "fork", None)
    return fork() if callable(fork) else engine


def runs_on_device(engine: Engine) -> bool:
    """Whether the engine keeps inputs and outputs in device memory (``infer_on_device``, the optional
    part of the protocol that the device step uses; ONNX Runtime engines have it)."""
    return callable(getattr(engine, "infer_on_device", None))


def single_input(engine: Engine) -> TensorMeta:
    """The one input of a feature or VAE graph."""
    (meta,) = engine.inputs
    return meta


def describe(engine: Any) -> str:
    return f"{type(engine).__name__} on {engine.provider}"
