"""The embedding API: opaque handles, status codes, caller-owned buffers (torch-free).

In the style of the ONNX Runtime / TensorRT C APIs, so that the C ABI (``runtime/capi``) is a
thin mapping of it:

* ``runtime_create(bundle)`` loads a bundle's graphs once (the engine); ``session_create(runtime,
  width, height)`` makes one video stream's tracking state. Many sessions share one runtime.
* Every function returns a :class:`Status` (stable numeric values, the same as ``diffvos.h``)
  and never raises; ``last_error()`` (per thread) and ``session_last_error(s)`` /
  ``runtime_last_error(rt)`` (per handle) explain a failure.
* Per frame the caller passes the frame (uint8 HxWx3, BGR or RGB as declared) and the output
  buffers (uint8 HxW labels, optionally float32 probabilities) that the call fills; shapes and
  dtypes are checked and a wrong one returns ``Status.BUFFER`` without writing anything.

Threading: distinct sessions run concurrently on distinct threads (ONNX Runtime's ``run`` is
thread-safe and releases the GIL; each session has its own buffers). One session used from two
threads is serialised by a per-session lock, or refused with ``Status.BUSY`` when created with
``concurrency="refuse"``. Destroying a runtime leaves its sessions working: they hold the engine.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffvos.runtime.errors import BundleError, DiffvosError, InputError
from diffvos.runtime.propagation import DEFAULT_MAG_FILTER

MAX_OBJECTS = 255  # ids are uint8 (0 = background)


class Status(IntEnum):
    """Stable numeric status codes (``diffvos_status`` in diffvos.h)."""

    OK = 0
    NULL_HANDLE = 1  # a handle (or required argument) is None / NULL
    INVALID_HANDLE = 2  # destroyed, never created, or of the wrong kind
    INVALID_ARGUMENT = 3  # a bad option, size, object id or mask
    BUFFER = 4  # a buffer of the wrong shape, dtype, size or not writeable
    BUNDLE = 5  # bundle missing, corrupted or unsupported
    BACKEND = 6  # ONNX Runtime could not create or run a graph
    NOT_STARTED = 7  # track before any object was added
    NO_SUCH_OBJECT = 8  # remove of an id the session does not track
    BUSY = 9  # session in use by another thread (concurrency="refuse")
    OUT_OF_MEMORY = 10
    RUNTIME = 11  # C ABI only: the embedded Python runtime could not start
    INTERNAL = 12  # a bug: the message says what happened


STATUS_TEXT = {
    Status.OK: "ok",
    Status.NULL_HANDLE: "null handle or argument",
    Status.INVALID_HANDLE: "invalid handle (destroyed, never created or of another kind)",
    Status.INVALID_ARGUMENT: "invalid argument",
    Status.BUFFER: "buffer of the wrong size, shape or type",
    Status.BUNDLE: "bundle missing, corrupted or unsupported",
    Status.BACKEND: "execution backend error",
    Status.NOT_STARTED: "no object added yet",
    Status.NO_SUCH_OBJECT: "no such object",
    Status.BUSY: "session busy in another thread",
    Status.OUT_OF_MEMORY: "out of memory",
    Status.RUNTIME: "embedded runtime could not start",
    Status.INTERNAL: "internal error",
}


def status_string(status: int) -> str:
    try:
        return STATUS_TEXT[Status(status)]
    except ValueError:
        return "unknown status"


@dataclass
class RuntimeOptions:
    backend: str = "auto"  # auto | tensorrt | cuda | cpu
    threads: int = 0  # ONNX Runtime intra-op threads, 0 = its default
    verify_files: bool = True  # check every graph's sha256 on load


@dataclass
class SessionOptions:
    color: str = "BGR"  # channel order of the frames passed in: BGR | RGB
    concurrency: str = "serialize"  # serialize | refuse (a second thread gets Status.BUSY)
    memory: int = 28  # METHOD.md section 2 defaults, as the CLI
    topk: int = 15
    radius: int = 15
    temperature: float = 0.2
    mag_filter: str = DEFAULT_MAG_FILTER  # off | adaptive | a radius in feature cells
    seed: int = 0
    fresh_noise: bool = False
    # Python only: a full PropagationConfig, used instead of the five fields above when given
    propagation: Any = None


@dataclass
class RuntimeInfo:
    version: str
    bundle: str
    backend: str  # requested
    provider: str  # the provider really running the graphs
    providers: list[str]
    manifest: dict[str, Any]


@dataclass
class SessionInfo:
    width: int
    height: int
    color: str
    object_ids: list[int]  # in channel order: probability channel i+1 is object_ids[i]
    prob_shape: tuple[int, int, int]  # (K+1, grid_h, grid_w)
    timings: dict[str, float] = field(default_factory=dict)  # ms, last add/track call
    memory_bytes: int = 0
    frames: int = 0  # frames seen since the last start/reset


# --- errors -----------------------------------------------------------------------------------

_tls = threading.local()


def last_error() -> str:
    """The message of this thread's last failing call ("" if none yet)."""
    return getattr(_tls, "message", "")


def _status_of(exc: BaseException) -> Status:
    if isinstance(exc, MemoryError):
        return Status.OUT_OF_MEMORY
    if isinstance(exc, BundleError):
        return Status.BUNDLE
    if isinstance(exc, DiffvosError):
        return Status.INVALID_ARGUMENT
    if type(exc).__module__.startswith("onnxruntime"):
        return Status.BACKEND
    return Status.INTERNAL


def _fail(handle: Any, status: Status, message: str) -> Status:
    _tls.message = message
    if isinstance(handle, (Runtime, Session)):
        handle._last_error = message
    return status


def _fail_exc(handle: Any, exc: BaseException, what: str) -> Status:
    status = _status_of(exc)
    text = str(exc) or type(exc).__name__
    if status in (Status.INTERNAL, Status.BACKEND, Status.OUT_OF_MEMORY):
        text = f"{type(exc).__name__}: {text}"
    return _fail(handle, status, f"{what}: {text}")


class _Reject(Exception):
    """Internal: an argument check failed with this status (never leaves the module)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- handles ----------------------------------------------------------------------------------


class Runtime:
    """Opaque: one loaded bundle. Create with :func:`runtime_create`."""

    __slots__ = ("_extractor", "_options", "_alive", "_last_error", "_metadata_json")

    def __init__(self, extractor: Any, options: RuntimeOptions) -> None:
        self._extractor = extractor
        self._options = options
        self._alive = True
        self._last_error = ""
        self._metadata_json = json.dumps(extractor.manifest.to_dict())

    def __repr__(self) -> str:
        state = "alive" if self._alive else "destroyed"
        return f"<diffvos Runtime {state}>"


class Session:
    """Opaque: one video stream's tracking state. Create with :func:`session_create`."""

    def __init__(self, extractor: Any, width: int, height: int, options: SessionOptions) -> None:
        from diffvos.runtime.tracker import Tracker

        self._alive = True
        self._last_error = ""
        self._lock = threading.Lock()
        self._refuse = options.concurrency == "refuse"
        self.width, self.height = width, height
        self._rgb = options.color == "RGB"
        self._options = options
        self._tracker = Tracker(extractor.fork(seed=options.seed, fresh_noise=options.fresh_noise), _config(options))
        self._grid = self._tracker.extractor.grid_size((height, width))
        self._ids: list[int] = []  # user id of channel i+1
        self._lut = np.zeros(256, np.uint8)  # channel -> user id
        self._bgr = np.empty((height, width, 3), np.uint8) if self._rgb else None
        self._labels = np.empty((height, width), np.uint8)  # channel ids before the lut
        self._timings: dict[str, float] = {}
        self._frames = 0

    def __repr__(self) -> str:
        state = "alive" if self._alive else "destroyed"
        return f"<diffvos Session {self.width}x{self.height} {state}, {len(self._ids)} objects>"

    # all methods below run with the session lock held and may raise; the functions catch

    def _frame(self, frame: Any) -> np.ndarray:
        _check_array("frame", frame, np.uint8, (self.height, self.width, 3), writeable=False)
        if self._rgb:
            np.copyto(self._bgr, frame[:, :, ::-1])
            return self._bgr
        return frame

    def _check_probs(self, probs: Any) -> None:
        if probs is not None:
            _check_array("probs", probs, np.float32, (len(self._ids) + 1, *self._grid), writeable=True)

    def _track(self, frame: Any, out: Any, probs: Any) -> None:
        t0 = time.perf_counter()
        if not self._ids:
            raise _Reject(Status.NOT_STARTED, "track: no object added yet; call session_add_objects first")
        bgr = self._frame(frame)
        _check_array("out", out, np.uint8, (self.height, self.width), writeable=True)
        self._check_probs(probs)
        timings = self._tracker.step_into(bgr, self._labels, probs)
        _map_ids(self._lut, self._labels, out)
        self._finish(timings, t0)

    def _add_objects(self, frame: Any, labels: Any, out: Any) -> None:
        t0 = time.perf_counter()
        bgr = self._frame(frame)
        _check_array("labels", labels, np.uint8, (self.height, self.width), writeable=False)
        if out is not None:
            _check_array("out", out, np.uint8, (self.height, self.width), writeable=True)
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
        new = [int(i) for i in present if i != 0 and i not in self._ids]
        if not new:
            raise _Reject(Status.INVALID_ARGUMENT, "add_objects: the mask holds no object that is not tracked already")
        if len(self._ids) + len(new) > MAX_OBJECTS:
            raise _Reject(Status.INVALID_ARGUMENT, f"add_objects: at most {MAX_OBJECTS} objects per session")
        first = len(self._ids) + 1
        to_channel = np.zeros(256, np.uint8)
        to_channel[new] = np.arange(first, first + len(new))
        channels = to_channel[labels]  # new objects only; tracked ids and background -> 0
        if not self._ids:
            result = self._tracker.start(bgr, channels)
            self._labels[...] = result.labels
            timings = result.timings
            self._frames = 0
        else:
            timings = self._tracker.add_objects(bgr, channels, self._labels)
        self._ids.extend(new)
        self._lut[first : first + len(new)] = new
        if out is not None:
            _map_ids(self._lut, self._labels, out)
        self._finish(timings, t0)

    def _remove_object(self, object_id: Any) -> None:
        if not isinstance(object_id, (int, np.integer)) or isinstance(object_id, bool):
            raise _Reject(Status.INVALID_ARGUMENT, f"remove_object: object id must be an int, not {type(object_id).__name__}")
        if object_id not in self._ids:
            raise _Reject(Status.NO_SUCH_OBJECT, f"remove_object: object {object_id} is not tracked (tracked: {self._ids})")
        k = self._ids.index(int(object_id)) + 1
        if len(self._ids) == 1:
            self._reset()  # nothing left to track: the next add_objects starts a new video
            return
        self._tracker.remove_object(k)
        del self._ids[k - 1]
        self._lut[:] = 0
        self._lut[1 : len(self._ids) + 1] = self._ids

    def _reset(self) -> None:
        self._tracker.reset()
        self._ids.clear()
        self._lut[:] = 0
        self._frames = 0
        self._timings = {}

    def _finish(self, timings: dict[str, float], t0: float) -> None:
        self._timings = timings
        timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        self._frames += 1

    def _memory_bytes(self) -> int:
        own = self._lut.nbytes + self._labels.nbytes + (self._bgr.nbytes if self._bgr is not None else 0)
        return own + self._tracker.memory_bytes()

    def _info(self) -> SessionInfo:
        return SessionInfo(
            width=self.width, height=self.height, color="RGB" if self._rgb else "BGR",
            object_ids=list(self._ids), prob_shape=(len(self._ids) + 1, *self._grid),
            timings=dict(self._timings), memory_bytes=self._memory_bytes(), frames=self._frames,
        )


def _map_ids(lut: np.ndarray, channels: np.ndarray, out: np.ndarray) -> None:
    """out = lut[channels] without temporaries (np.take would convert the indices to intp)."""
    import cv2

    written = cv2.LUT(channels, lut, dst=out)
    if written is not out:
        np.copyto(out, written)


def _check_array(name: str, a: Any, dtype: type, shape: tuple[int, ...], writeable: bool) -> None:
    if not isinstance(a, np.ndarray):
        raise _Reject(Status.BUFFER, f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype or a.shape != shape:
        raise _Reject(
            Status.BUFFER,
            f"{name}: expected {np.dtype(dtype).name} of shape {shape}, got {a.dtype.name} of shape {a.shape}",
        )
    if writeable and not a.flags.writeable:
        raise _Reject(Status.BUFFER, f"{name}: the array is read-only")


def _config(options: SessionOptions) -> Any:
    from diffvos.runtime.propagation import PropagationConfig, parse_mag_filter

    if options.propagation is not None:
        if not isinstance(options.propagation, PropagationConfig):
            raise _Reject(Status.INVALID_ARGUMENT, "options.propagation must be a PropagationConfig")
        return options.propagation
    return PropagationConfig(
        temperature=float(options.temperature),
        topk=int(options.topk),
        radius=int(options.radius),
        memory=int(options.memory),
        mag_filter=parse_mag_filter(str(options.mag_filter)),
    )


def _check_session_options(o: Any) -> SessionOptions:
    o = SessionOptions() if o is None else o
    if not isinstance(o, SessionOptions):
        raise _Reject(Status.INVALID_ARGUMENT, f"options must be a SessionOptions, not {type(o).__name__}")
    problems = []
    if o.color not in ("BGR", "RGB"):
        problems.append(f"color must be 'BGR' or 'RGB', not {o.color!r}")
    if o.concurrency not in ("serialize", "refuse"):
        problems.append(f"concurrency must be 'serialize' or 'refuse', not {o.concurrency!r}")
    if not (isinstance(o.memory, int) and o.memory >= 0):
        problems.append(f"memory must be an int >= 0, not {o.memory!r}")
    if not (isinstance(o.topk, int) and o.topk >= 1):
        problems.append(f"topk must be an int >= 1, not {o.topk!r}")
    if not (isinstance(o.radius, int) and o.radius >= 0):
        problems.append(f"radius must be an int >= 0, not {o.radius!r}")
    if not (isinstance(o.temperature, (int, float)) and o.temperature > 0):
        problems.append(f"temperature must be > 0, not {o.temperature!r}")
    if problems:
        raise _Reject(Status.INVALID_ARGUMENT, "session options: " + "; ".join(problems))
    return o


# --- the functions ----------------------------------------------------------------------------


def _guard(kind: type | None, what: str) -> Callable:
    """Decorator: check the handle, run, turn any exception into a status + message."""

    def wrap(fn: Callable) -> Callable:
        def call(handle: Any = None, *args: Any, **kwargs: Any) -> Any:
            if kind is not None:
                if handle is None:
                    return _fail(None, Status.NULL_HANDLE, f"{what}: the {kind.__name__.lower()} handle is None")
                if not isinstance(handle, kind):
                    return _fail(None, Status.INVALID_HANDLE, f"{what}: expected a {kind.__name__} handle, got {type(handle).__name__}")
                if not handle._alive:
                    return _fail(None, Status.INVALID_HANDLE, f"{what}: the {kind.__name__.lower()} was destroyed")
            try:
                return fn(handle, *args, **kwargs)
            except _Reject as exc:
                return _fail(handle, exc.status, str(exc))
            except Exception as exc:  # noqa: BLE001 - nothing may cross the API boundary
                return _fail_exc(handle, exc, what)

        call.__name__, call.__doc__, call.__wrapped__ = fn.__name__, fn.__doc__, fn
        return call

    return wrap


def _locked(what: str) -> Callable:
    """Decorator for session functions: take the session lock (wait, or refuse with BUSY)."""

    def wrap(fn: Callable) -> Callable:
        def call(s: Session, *args: Any, **kwargs: Any) -> Status:
            if not s._lock.acquire(blocking=not s._refuse):
                return _fail(s, Status.BUSY, f"{what}: the session is in use by another thread")
            try:
                if not s._alive:  # destroyed while this call waited
                    return _fail(None, Status.INVALID_HANDLE, f"{what}: the session was destroyed")
                fn(s, *args, **kwargs)
                return Status.OK
            finally:
                s._lock.release()

        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return _guard(Session, what)(call)

    return wrap


def version() -> str:
    from diffvos import __version__

    return __version__


def available_backends() -> list[str]:
    """Backends this machine's ONNX Runtime offers (a listed GPU backend may still fall back)."""
    import onnxruntime as ort

    from diffvos.runtime.providers import _PROVIDER

    have = set(ort.get_available_providers())
    return [name for name, provider in _PROVIDER.items() if provider in have]


def runtime_create(bundle: str | Path | None, options: RuntimeOptions | None = None) -> tuple[Status, Runtime | None]:
    """Load a bundle (its graphs, on the best provider that works) into a shareable engine."""
    from diffvos.runtime.providers import BACKENDS

    what = "runtime_create"
    try:
        if bundle is None:
            return _fail(None, Status.NULL_HANDLE, f"{what}: bundle path is None"), None
        options = RuntimeOptions() if options is None else options
        if not isinstance(options, RuntimeOptions) or options.backend not in BACKENDS:
            return _fail(None, Status.INVALID_ARGUMENT, f"{what}: backend must be one of {', '.join(BACKENDS)}, not {getattr(options, 'backend', options)!r}"), None
        if not (isinstance(options.threads, int) and options.threads >= 0):
            return _fail(None, Status.INVALID_ARGUMENT, f"{what}: threads must be an int >= 0, not {options.threads!r}"), None
        from diffvos.runtime.bundle import read_manifest
        from diffvos.runtime.features import FeatureExtractor

        read_manifest(bundle, verify_files=bool(options.verify_files))  # bundle problems -> BUNDLE
        try:
            extractor = FeatureExtractor(bundle, backend=options.backend, threads=options.threads,
                                         verify_files=False, quiet=True)
        except (BundleError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime refused the graph
            return _fail(None, Status.BACKEND, f"{what}: {bundle}: {exc}"), None
        return Status.OK, Runtime(extractor, options)
    except Exception as exc:  # noqa: BLE001
        return _fail_exc(None, exc, what), None


def runtime_from_extractor(extractor: Any) -> tuple[Status, Runtime | None]:
    """A runtime over an already opened ``FeatureExtractor`` (Python callers that hold one)."""
    from diffvos.runtime.features import FeatureExtractor

    if not isinstance(extractor, FeatureExtractor):
        return _fail(None, Status.INVALID_ARGUMENT, "runtime_from_extractor: expected a FeatureExtractor"), None
    return Status.OK, Runtime(extractor, RuntimeOptions(backend=extractor.provider.requested))


_RAISES = {Status.BUNDLE: BundleError, Status.INVALID_ARGUMENT: InputError, Status.BUFFER: InputError,
           Status.NOT_STARTED: InputError, Status.NO_SUCH_OBJECT: InputError}


def raise_for_status(status: Status, handle: Any = None) -> None:
    """For Python callers that prefer exceptions (the CLI): raise the matching DiffvosError
    (InputError, BundleError) or, for other failures, DiffvosError, with the call's message."""
    if status == Status.OK:
        return
    message = handle._last_error if isinstance(handle, (Runtime, Session)) and handle._last_error else last_error()
    if status == Status.OUT_OF_MEMORY:
        raise MemoryError(message)
    raise _RAISES.get(Status(status), DiffvosError)(message)


@_guard(Runtime, "runtime_destroy")
def runtime_destroy(rt: Runtime) -> Status:
    """Release the runtime. Its sessions keep working (they hold the engine) until destroyed."""
    rt._alive = False
    rt._extractor = None
    return Status.OK


def runtime_last_error(rt: Runtime | None) -> str:
    """The runtime's last failure ("" if none); a handle that is not alive gives a message too."""
    if not isinstance(rt, Runtime):
        return "not a runtime handle"
    return rt._last_error if rt._alive else "the runtime was destroyed"


@_guard(Runtime, "runtime_info")
def _runtime_info(rt: Runtime) -> tuple[Status, RuntimeInfo]:
    x = rt._extractor
    info = RuntimeInfo(
        version=version(), bundle=str(x.bundle), backend=rt._options.backend, provider=x.provider.active,
        providers=list(x.provider.providers), manifest=json.loads(rt._metadata_json),
    )
    return Status.OK, info


def runtime_info(rt: Runtime | None) -> tuple[Status, RuntimeInfo | None]:
    """Version, requested backend, the provider really used and the bundle's manifest."""
    result = _runtime_info(rt)
    return result if isinstance(result, tuple) else (result, None)


def runtime_metadata_json(rt: Runtime) -> str:
    """Internal for the C ABI (the string lives as long as the handle)."""
    return rt._metadata_json


@_guard(Runtime, "session_create")
def _session_create(rt: Runtime, width: Any, height: Any, options: SessionOptions | None) -> tuple[Status, Session]:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 < v <= 16384:
            raise _Reject(Status.INVALID_ARGUMENT, f"session_create: {name} must be an int in 1..16384, not {v!r}")
    options = _check_session_options(options)
    rt._extractor.input_size((int(height), int(width)))  # a dynamic bundle's range -> InputError
    return Status.OK, Session(rt._extractor, int(width), int(height), options)


def session_create(
    rt: Runtime | None, width: int, height: int, options: SessionOptions | None = None
) -> tuple[Status, Session | None]:
    """One tracking session for a stream of width x height frames, sharing the runtime's engine."""
    result = _session_create(rt, width, height, options)
    return result if isinstance(result, tuple) else (result, None)


@_guard(Session, "session_destroy")
def session_destroy(s: Session) -> Status:
    """Free the session (waits for a call running in another thread to finish)."""
    with s._lock:
        if not s._alive:
            return _fail(None, Status.INVALID_HANDLE, "session_destroy: the session was destroyed")
        s._alive = False
        s._tracker = None
    return Status.OK


@_locked("session_add_objects")
def session_add_objects(s: Session, frame: np.ndarray, labels: np.ndarray, out: np.ndarray | None = None) -> Status:
    """Add every nonzero id of ``labels`` not tracked yet, on ``frame``; the first call starts the
    video, a later one adds objects appearing mid-video (the frame then counts as tracked).
    ``out`` (optional, uint8 HxW) receives the frame's label map."""
    s._add_objects(frame, labels, out)


@_locked("session_remove_object")
def session_remove_object(s: Session, object_id: int) -> Status:
    """Stop tracking ``object_id``; its region becomes background. Removing the last object
    resets the session."""
    s._remove_object(object_id)


@_locked("session_track")
def session_track(s: Session, frame: np.ndarray, out: np.ndarray, probs: np.ndarray | None = None) -> Status:
    """Track one frame into ``out`` (uint8 HxW, the caller's ids) and optionally ``probs``
    (float32, ``SessionInfo.prob_shape``: background then objects in ``object_ids`` order)."""
    s._track(frame, out, probs)


@_locked("session_reset")
def session_reset(s: Session) -> Status:
    """Forget all objects and the memory; the next add_objects starts a new video."""
    s._reset()


@_guard(Session, "session_info")
def _session_info(s: Session) -> tuple[Status, SessionInfo]:
    with s._lock:
        if not s._alive:
            raise _Reject(Status.INVALID_HANDLE, "session_info: the session was destroyed")
        return Status.OK, s._info()


def session_info(s: Session | None) -> tuple[Status, SessionInfo | None]:
    """Size, object ids, probability shape, last frame's stage timings, memory in use."""
    result = _session_info(s)
    return result if isinstance(result, tuple) else (result, None)


def session_last_error(s: Session | None) -> str:
    if not isinstance(s, Session):
        return "not a session handle"
    return s._last_error if s._alive else "the session was destroyed"
