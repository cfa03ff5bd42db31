"""The Python API: a :class:`Runtime` loads a bundle's engines once; a :class:`Session` tracks one
stream with a single per-frame entry, :meth:`Session.step` (compare Cutie's
``InferenceCore.step(image, mask=None, objects=None)``).

Every caller drives tracking through ``Session.step``: ``diffvos track``, the demo, the quality
benchmark, the INT8 accuracy report, the C ABI and the samples. Failures raise the typed
exceptions of :mod:`diffvos.errors` (as ONNX Runtime's ``InferenceSession`` raises its own);
status codes exist only in :mod:`diffvos.runtime.capi`. A call that raises has changed nothing:
every argument is checked before any state does.

Threading: distinct sessions run concurrently on distinct threads (ONNX Runtime's ``run`` is
thread-safe and releases the GIL; the native TensorRT backend gives each session an execution
context, stream and buffers of its own, ``Engine.fork``). One session used from two threads is serialised by its lock,
or refused with :class:`~diffvos.errors.BusyError` when created with ``concurrency="refuse"``.
Closing a runtime leaves its sessions working: they hold the engines.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from diffvos.bundle import FEATURES_GRAPH, read_manifest
from diffvos.config import MAX_FRAME_SIDE, RuntimeConfig, SessionConfig
from diffvos.errors import (
    BundleError,
    BusyError,
    ClosedError,
    InputError,
    InvalidBufferError,
    NotStartedError,
)
from diffvos.runtime.attention import AttentionPropagator
from diffvos.runtime.backends import loaders_for
from diffvos.runtime.device import DeviceTensor
from diffvos.runtime.engine import Engine, Loader
from diffvos.runtime.features import Features, Tensor
from diffvos.runtime.objects import ObjectManager
from diffvos.runtime.postprocess import LabelSpec, labels_to_onehot
from diffvos.runtime.propagation import Propagator
from diffvos.runtime.propagators import propagator_for
from diffvos.runtime.threads import ThreadPlan, plan_threads

if TYPE_CHECKING:
    from diffvos.runtime.device_step import GraphPropagator
    from diffvos.runtime.graph_engines import GraphEngines


@dataclass(frozen=True)
class RuntimeInfo:
    version: str
    bundle: str
    backend: str  # requested
    provider: str  # the provider really running the feature graph
    providers: list[str]
    manifest: dict[str, Any]


@dataclass(frozen=True)
class SessionInfo:
    width: int
    height: int
    color: str
    object_ids: list[int]  # in channel order: probability channel i+1 is object_ids[i]
    prob_shape: tuple[int, int, int]  # (K+1, grid_h, grid_w)
    timings: dict[str, float] = field(default_factory=dict)  # ms, last step
    memory_bytes: int = 0
    frames: int = 0  # frames stepped since the video started (or the last reset)


@dataclass(eq=False)
class PendingStep:
    """One session's step between :meth:`Session.begin` and :meth:`Session.finish`: the checked
    arguments and the prepared feature-graph input ``x_t`` [E, Cin, H, W]."""

    session: Session
    x_t: Tensor  # host array, or device tensor on the device step
    out: np.ndarray
    mask: np.ndarray | None
    new: list[int]  # object ids the mask adds
    probs: np.ndarray | None
    t0: float  # perf_counter at the start of the step's work
    open: bool = True


class Runtime:
    """One loaded bundle: its engines, shared by every session made from it.

    ``loaders`` (graph name -> lazy loader) replaces the loaders ``backend`` would choose, for
    callers that build engines their own way. An INT8 bundle whose calibration failed its
    accuracy gate is refused (BundleError naming the failed limits) unless
    ``allow_failed_calibration``.
    """

    def __init__(self, bundle: str | Path, backend: str = "auto", threads: int = 0, verify_files: bool = True,
                 *, loaders: Mapping[str, Loader] | None = None, thread_plan: ThreadPlan | None = None,
                 allow_failed_calibration: bool = False) -> None:
        if not isinstance(bundle, (str, Path)):
            raise InputError(f"bundle must be a path, not {type(bundle).__name__}")
        self.config = RuntimeConfig(backend=backend, threads=threads, verify_files=verify_files,
                                    allow_failed_calibration=allow_failed_calibration)
        self.thread_plan = thread_plan or plan_threads(self.config.threads)  # BLAS threads of every step
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle, verify_files=verify_files)
        calibration = self.manifest.calibration
        if calibration is not None and not calibration.passed and not allow_failed_calibration:
            raise BundleError(
                "this INT8 bundle failed its calibration gate: " + "; ".join(calibration.failed_limits())
                + ". Calibrate again (diffvos calibrate) or load it anyway with allow_failed_calibration=True "
                "(--allow-failed-calibration)", self.bundle)
        loaders = loaders or loaders_for(self.bundle, self.manifest, self.config)
        self.engines: dict[str, Engine] = {name: load() for name, load in loaders.items()}
        self.closed = False
        self._graphs: GraphEngines | None = None
        self._graphs_lock = threading.Lock()

    @property
    def graphs(self) -> GraphEngines:
        """The graphs the runtime builds itself (propagation, input preparation), on the provider
        the feature graph runs on; made at the first use, shared by the sessions."""
        with self._graphs_lock:
            if self._graphs is None:
                from diffvos.runtime.graph_engines import GraphEngines, graph_backend

                self._graphs = GraphEngines(graph_backend(self.provider), self.thread_plan)
            return self._graphs

    @property
    def provider(self) -> str:
        """The provider that really runs the feature graph (after any fallback)."""
        return self.engines[FEATURES_GRAPH].provider

    @property
    def notes(self) -> list[str]:
        """Lines for the user about providers that fell back (e.g. no GPU); empty when none did."""
        own = self._graphs.notes if self._graphs is not None else []
        return sorted({e.note for e in self.engines.values() if e.note} | set(own))

    @property
    def info(self) -> RuntimeInfo:
        from diffvos import __version__

        engine = self.engines[FEATURES_GRAPH]
        return RuntimeInfo(__version__, str(self.bundle), self.config.backend, engine.provider, engine.providers,
                           self.manifest.to_dict())

    def session(self, width: int, height: int, config: SessionConfig | None = None, **options: Any) -> Session:
        """A session for a stream of ``width`` x ``height`` frames, configured by ``config`` or by
        keyword ``options`` (:class:`~diffvos.config.SessionConfig` and
        :class:`~diffvos.config.PropagationConfig` fields, e.g. ``color="RGB", memory=10``)."""
        if config is not None and options:
            raise InputError("give a SessionConfig or keyword options, not both")
        return Session(self, width, height, config or SessionConfig.from_options(**options))

    def step_many(self, steps: Iterable[StreamStep | tuple], *,
                  return_exceptions: bool = False) -> list[np.ndarray | Exception]:
        """Step several sessions at once: the feature graph runs once on their stacked frames
        (up to the bundle's ``streams.max_streams`` per call), then each session propagates on its
        own memory. ``steps``: :class:`StreamStep` or ``(session, frame[, mask[, object_ids]])``
        tuples, one per session; the label maps are the ones :meth:`Session.step` would give.
        See :func:`step_many`."""
        return step_many(steps, return_exceptions=return_exceptions)

    def close(self) -> None:
        """Release the runtime's hold on the engines, its own graphs' too (sessions keep theirs until
        closed)."""
        self.engines = {}
        with self._graphs_lock:
            self._graphs = None
        self.closed = True

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.provider
        return f"<diffvos.Runtime {str(self.bundle)!r} {state}>"


class Session:
    """One stream's tracking state over a runtime's engines."""

    def __init__(self, runtime: Runtime, width: int, height: int, config: SessionConfig | None = None) -> None:
        if runtime.closed:
            raise ClosedError("the runtime was closed")
        for name, v in (("width", width), ("height", height)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 < v <= MAX_FRAME_SIDE:
                raise InputError(f"{name} must be an integer in 1..{MAX_FRAME_SIDE}, got {v!r}")
        self.config = config or SessionConfig()
        self.width, self.height = int(width), int(height)
        self.thread_plan = runtime.thread_plan
        # the device step: propagation graph and feature map on the feature graph's device
        self.graphs = runtime.graphs if self.config.propagation.propagation_kernel == "graph" else None
        self.device = self.graphs.device_io() if self.graphs is not None else None  # counts bytes moved
        self.features = Features(runtime.manifest, runtime.engines, self.config.seed, self.config.fresh_noise,
                                 self.config.inversion_steps, device=self.device, graphs=self.graphs)
        self.grid = self.features.grid_size((self.height, self.width))  # a dynamic bundle's range -> InputError
        self.scaled = self.features.input_size((self.height, self.width))
        self.labels = LabelSpec(self.features.stride, self.scaled)
        self.objects = ObjectManager()
        self.propagator: Propagator | AttentionPropagator | GraphPropagator | None = None
        self.timings: dict[str, float] = {}
        self.frames = 0
        self.closed = False
        self._lock = threading.Lock()

    # -- the step ---------------------------------------------------------------------------------

    def step(self, frame: np.ndarray, out: np.ndarray | None = None, mask: np.ndarray | None = None,
             object_ids: Sequence[int] | None = None, probs: np.ndarray | None = None) -> np.ndarray:
        """Track one frame; return its label map (uint8 HxW of the caller's object ids).

        ``mask`` (uint8 HxW) adds objects on this frame: every id in it not tracked yet, or just
        ``object_ids``. The first call needs one; later ones add objects appearing mid-video (the
        annotation wins where it marks the new objects). ``out`` receives the label map when given
        (C-contiguous uint8 HxW); ``probs`` (float32, :attr:`SessionInfo.prob_shape` after the
        call) receives the soft mask on the feature grid.

        A step runs in three phases, shared with :meth:`Runtime.step_many` (several sessions, one
        feature-graph call): :meth:`begin` (lock, check, prepare the graph input), the feature
        graph, :meth:`finish` (propagate, postprocess).
        """
        with self.begin(frame, out, mask, object_ids, probs) as pending:
            t0 = time.perf_counter()
            features = self.features.run(pending.x_t)[0]
            return self.finish(pending, features, (time.perf_counter() - t0) * 1e3)

    @contextlib.contextmanager
    def begin(self, frame: np.ndarray, out: np.ndarray | None = None, mask: np.ndarray | None = None,
              object_ids: Sequence[int] | None = None, probs: np.ndarray | None = None) -> Iterator[PendingStep]:
        """Phase 1 of a step: hold the session, check every argument (a failure changes nothing)
        and prepare the feature graph's input (``pending.x_t``); the session stays held until
        the block ends, and :meth:`finish` must be called inside it."""
        with self._using(), self.thread_plan.blas():
            frame = _array("frame", frame, np.uint8, (self.height, self.width, 3))
            out = np.empty((self.height, self.width), np.uint8) if out is None else \
                _array("out", out, np.uint8, (self.height, self.width), writeable=True)
            new: list[int] = []
            if mask is not None:
                mask = _array("mask", mask, np.uint8, (self.height, self.width))
                new = self.objects.plan(mask, object_ids)
                if self.propagator is not None and self.config.propagation.memory == 0:
                    raise InputError("objects cannot be added mid-video with memory=0: the frame would not be "
                                     "remembered")
            elif object_ids is not None:
                raise InputError("object_ids name objects of a mask: give the mask too")
            elif not self.objects:
                raise NotStartedError("no object to track yet: give the first frame's mask")
            if probs is not None:
                k = len(self.objects) + len(new)
                probs = _array("probs", probs, np.float32, (k + 1, *self.grid), writeable=True)
            # nothing has changed until here
            t0 = time.perf_counter()
            (x_t,) = self.features.prepare(frame, self.config.color).values()
            pending = PendingStep(self, x_t, out, mask, new, probs, t0)
            try:
                yield pending
            finally:
                pending.open = False

    def finish(self, pending: PendingStep, features: Tensor, features_ms: float = 0.0) -> np.ndarray:
        """Phase 3 of a step: propagate ``features`` [C, h, w] (this frame's, from the feature
        graph run on ``pending.x_t``; a device tensor on the device step), write and return the
        label map. ``features_ms``: the graph call's time, for :attr:`timings` (with the graph
        kernel the label map is made in the propagation run: ``propagate_ms`` covers it and
        ``postprocess_ms`` is what the host does after)."""
        if pending.session is not self or not pending.open:
            raise InputError("finish() takes a pending step of this session, inside its begin() block, once")
        pending.open = False
        out, mask, new = pending.out, pending.mask, pending.new
        t1 = time.perf_counter()
        if not new:
            propagate_ms, postprocess_ms = self.propagator.step_to_labels(features, self.labels, self.objects.lut,
                                                                          out, pending.probs)
        else:  # new objects: their labels come (partly) from the mask, timed with the propagation
            soft = self._start(features, mask, new, out) if self.propagator is None else \
                self._add(features, mask, new, out)
            t2 = time.perf_counter()
            if pending.probs is not None:
                np.copyto(pending.probs, soft)
            propagate_ms, postprocess_ms = (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3
        t3 = time.perf_counter()
        self.frames += 1
        self.timings = {**self.features.timings, "features_ms": features_ms, "propagate_ms": propagate_ms,
                        "postprocess_ms": postprocess_ms, "total_ms": (t3 - pending.t0) * 1e3}
        return out

    def _start(self, feats: Tensor, mask: np.ndarray, new: list[int], out: np.ndarray) -> np.ndarray:
        """First frame: the memory starts from the given mask, which is also the frame's output."""
        channels = self.objects.channels(mask, new)
        c, h, w = feats.shape
        onehot = labels_to_onehot(channels, (h, w), len(new) + 1)
        self.propagator = propagator_for(self.features.manifest.affinity, c, h, w, len(new) + 1,
                                         self.config.propagation, graphs=self.graphs, labels=self.labels,
                                         out_hw=out.shape, io=self.device)
        self.propagator.start(feats, onehot)
        self.objects.add(new)
        self.frames = 0
        np.take(self.objects.lut, channels, out=out)
        return onehot

    def _add(self, feats: Tensor, mask: np.ndarray, new: list[int], out: np.ndarray) -> np.ndarray:
        """Objects appearing mid-video: the frame is predicted for the tracked objects, the new
        objects' annotation overrides the prediction where it marks them, and the frame is
        remembered once, with the combined mask (the new channels are zero in older frames)."""
        channels = self.objects.channels(mask, new)
        soft = self.propagator.predict(feats)
        self.labels.write(soft, self.objects.lut, out)
        np.copyto(out, mask, where=channels > 0)
        k_old, k_new = len(self.objects), len(self.objects) + len(new)
        onehot = labels_to_onehot(channels, soft.shape[1:], k_new + 1)
        combined = np.zeros((k_new + 1, *soft.shape[1:]), np.float32)
        combined[: k_old + 1] = soft
        combined[k_old + 1 :] = onehot[k_old + 1 :]
        combined[: k_old + 1, onehot[0] == 0] = 0.0  # cells of a new object: the annotation wins
        self.propagator.add_objects(len(new))
        self.propagator.remember(combined)
        self.objects.add(new)
        return combined

    # -- objects and state ----------------------------------------------------------------------

    def remove(self, object_id: int) -> None:
        """Stop tracking ``object_id``; its region becomes background. Removing the last object
        resets the session."""
        with self._using():
            channel = self.objects.channel(object_id)
            if len(self.objects) == 1:
                self._reset()
                return
            self.propagator.remove_object(channel)
            self.objects.remove(object_id)

    def reset(self) -> None:
        """Forget all objects and the memory; the next step needs a mask again."""
        with self._using():
            self._reset()

    def _reset(self) -> None:
        self.propagator = None
        self.objects.clear()
        self.frames = 0
        self.timings = {}

    @property
    def info(self) -> SessionInfo:
        with self._using():
            return SessionInfo(
                width=self.width, height=self.height, color=self.config.color, object_ids=list(self.objects.ids),
                prob_shape=(len(self.objects) + 1, *self.grid), timings=dict(self.timings),
                memory_bytes=self.memory_bytes(), frames=self.frames,
            )

    def memory_bytes(self) -> int:
        """Bytes of this stream's state: memory bank, propagation scratch, feature buffers."""
        total = self.features.nbytes + self.objects.lut.nbytes
        if self.propagator is not None:
            total += self.propagator.bank.nbytes + self.propagator.scratch_nbytes
        return total

    def close(self) -> None:
        """Free the session (waits for a step running in another thread to finish)."""
        with self._lock:
            if not self.closed:
                self.features.close()
            self.closed = True
            self.propagator = None

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=self.config.concurrency != "refuse"):
            raise BusyError("the session is in use by another thread")
        try:
            if self.closed:
                raise ClosedError("the session was closed")
            yield
        finally:
            self._lock.release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.objects)} objects"
        return f"<diffvos.Session {self.width}x{self.height} {state}>"


def _array(name: str, a: Any, dtype: type, shape: tuple[int, ...], writeable: bool = False) -> np.ndarray:
    """Check a caller buffer (type, dtype, shape; writeable and C-contiguous for outputs)."""
    if not isinstance(a, np.ndarray):
        raise InvalidBufferError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype or a.shape != shape:
        raise InvalidBufferError(f"{name}: expected {np.dtype(dtype).name} of shape {shape}, "
                                 f"got {a.dtype.name} of shape {a.shape}")
    if writeable:
        if not a.flags.writeable:
            raise InvalidBufferError(f"{name}: the array is read-only")
        if not a.flags.c_contiguous:
            raise InvalidBufferError(f"{name}: the array must be C-contiguous (got strides {a.strides})")
    return a


# --- several streams per feature-graph call -------------------------------------------------------
# Several streams per feature-graph call: one call steps many sessions.
# 
# A camera box tracks many streams with one bundle; the feature graph is most of a step's cost and
# runs far better on a batch than once per stream. :func:`step_many` takes one step per session
# and runs each through the same three phases as :meth:`Session.step` (``begin`` -> features ->
# ``finish``), except that the feature graph runs once on the stacked inputs of every session that
# shares its engine and input size, ``streams.max_streams`` of them per call (bundles without a
# stream axis: one call each). Propagation then runs per session, on its own memory. Sessions may be
# at any frame, track any number of objects, start (first mask) or add objects in the same call.


@dataclass
class StreamStep:
    """One session's step in a batched call: the arguments of :meth:`Session.step`."""

    session: Session
    frame: np.ndarray
    mask: np.ndarray | None = None
    object_ids: Sequence[int] | None = None
    out: np.ndarray | None = None
    probs: np.ndarray | None = None


def _as_step(item: StreamStep | tuple, index: int) -> StreamStep:
    if isinstance(item, StreamStep):
        return item
    if isinstance(item, tuple) and 2 <= len(item) <= 6 and isinstance(item[0], Session):
        return StreamStep(*item)
    raise InputError(f"steps[{index}] must be a StreamStep or a (session, frame[, mask[, object_ids]]) tuple, "
                     f"got {type(item).__name__}")


def step_many(steps: Iterable[StreamStep | tuple], *, return_exceptions: bool = False) -> list[np.ndarray | Exception]:
    """Step each session once; return the label maps in the order of ``steps``.

    Every step is checked before any session changes: by default the first bad one raises and no
    session has changed (the feature graph's failure too); with ``return_exceptions`` a bad step's
    place in the result holds its exception and the other sessions are stepped. A session appears
    at most once per call (its frames are sequential). Sessions are held in a fixed order
    (``id``), so concurrent calls over overlapping sessions cannot deadlock.
    """
    items = [_as_step(item, i) for i, item in enumerate(steps)]
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        if id(item.session) in seen:
            raise InputError(f"steps[{i}] steps the session of steps[{seen[id(item.session)]}] again: a session's "
                             "frames are sequential, give one per call")
        seen[id(item.session)] = i
    results: list[np.ndarray | Exception | None] = [None] * len(items)
    with contextlib.ExitStack() as held:
        pending: dict[int, PendingStep] = {}
        for i in sorted(range(len(items)), key=lambda k: id(items[k].session)):
            s = items[i]
            try:
                pending[i] = held.enter_context(s.session.begin(s.frame, s.out, s.mask, s.object_ids, s.probs))
            except Exception as exc:  # noqa: BLE001 - the caller asked for exceptions as results
                if not return_exceptions:
                    raise
                results[i] = exc
        features: dict[int, tuple[Tensor, float]] = {}
        for group in _calls(items, pending):
            lead = items[group[0]].session.features
            t0 = time.perf_counter()
            try:
                out = lead.run(lead.stack([pending[i].x_t for i in group]))
            except Exception as exc:  # noqa: BLE001
                if not return_exceptions:
                    raise
                for i in group:
                    results[i] = exc
                continue
            ms = (time.perf_counter() - t0) * 1e3
            for row, i in enumerate(group):
                features[i] = (out[row], ms)
        for i, (feats, ms) in features.items():
            try:
                results[i] = items[i].session.finish(pending[i], feats, ms)
            except Exception as exc:  # noqa: BLE001
                if not return_exceptions:
                    raise
                results[i] = exc
    return results  # type: ignore[return-value]


def _calls(items: list[StreamStep], pending: dict[int, PendingStep]) -> list[list[int]]:
    """The feature-graph calls: steps sharing an engine, an input shape and where the input lies
    (host or device), in order, at most the bundle's ``max_streams`` per call."""
    groups: dict[tuple[int, tuple[int, ...], bool], list[int]] = {}
    for i in sorted(pending):
        features, x_t = items[i].session.features, pending[i].x_t
        groups.setdefault((id(features.engine), tuple(x_t.shape), isinstance(x_t, DeviceTensor)), []).append(i)
    calls = []
    for members in groups.values():
        size = items[members[0]].session.features.max_streams
        calls.extend(members[k : k + size] for k in range(0, len(members), size))
    return calls
