"""Python side of the C ABI: each ``diffvos_*`` function of diffvos.h, mapped onto the Python API
(:class:`~diffvos.runtime.session.Runtime`, :class:`~diffvos.runtime.session.Session`).

This is the only place where exceptions become status codes (:mod:`.status`). Handles crossing
the ABI are not pointers to Python objects: they are keys of a table, taken from a counter that
never repeats, cast to the opaque pointer types. A destroyed or forged handle is therefore just
an unknown key (``DIFFVOS_ERR_INVALID_HANDLE``), never a dangling pointer. Caller buffers are
wrapped as numpy arrays without copying (``ffi.buffer``) and passed to the Python API, which
validates and fills them.

Strings returned to C are cffi ``char[]`` objects kept alive here: per handle (provider,
metadata, last error) until the handle is destroyed, static ones for the process.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from diffvos.config import (
    COLORS,
    CONCURRENCY,
    PropagationConfig,
    RuntimeConfig,
    SessionConfig,
)
from diffvos.runtime.capi.status import (
    Status,
    last_error,
    message_of,
    set_last_error,
    status_of,
)
from diffvos.runtime.session import Runtime, Session

TIMINGS = ("preprocess_ms", "vae_ms", "features_ms", "propagate_ms", "postprocess_ms", "total_ms")


@dataclass
class _Handle:
    obj: Runtime | Session
    error: str = ""  # this handle's last failure
    strings: dict[str, Any] = field(default_factory=dict)  # char[] kept alive for the handle


_table: dict[int, _Handle] = {}
_static: dict[str, Any] = {}  # process-lifetime strings
_keys = itertools.count(0x10000, 0x10)
_table_lock = threading.Lock()
_tls = threading.local()
_views: dict[tuple[int, int, str], np.ndarray] = {}  # (address, bytes, kind) -> array over it


class _Bad(Exception):
    """A check made here (NULL pointers, sizes, unknown handles) failed with this status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def _static_str(ffi: Any, text: str) -> Any:
    if text not in _static:
        _static[text] = ffi.new("char[]", text.encode("utf-8", "replace"))
    return _static[text]


def _keep(ffi: Any, handle: _Handle, name: str, text: str) -> Any:
    handle.strings[name] = buf = ffi.new("char[]", text.encode("utf-8", "replace"))
    return buf


def _register(ffi: Any, obj: Runtime | Session, ctype: str) -> Any:
    with _table_lock:
        key = next(_keys)
        _table[key] = _Handle(obj)
    return ffi.cast(ctype, key)


def _lookup(ffi: Any, ptr: Any, kind: type, what: str) -> tuple[int, _Handle]:
    name = kind.__name__.lower()
    if ptr == ffi.NULL:
        raise _Bad(Status.NULL_HANDLE, f"{what}: the {name} handle is NULL")
    key = int(ffi.cast("uintptr_t", ptr))
    handle = _table.get(key)
    if handle is None:
        raise _Bad(Status.INVALID_HANDLE, f"{what}: unknown {name} handle (destroyed or never created)")
    if not isinstance(handle.obj, kind):
        raise _Bad(Status.INVALID_HANDLE, f"{what}: this handle is a {type(handle.obj).__name__}, not a {kind.__name__}")
    return key, handle


def _array(ffi: Any, ptr: Any, nbytes: int, dtype: Any, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """A numpy view of a caller buffer, after checking its pointer and size (no copy)."""
    if ptr == ffi.NULL:
        raise _Bad(Status.BUFFER, f"{what}: {name} is NULL")
    item = np.dtype(dtype).itemsize
    want = int(np.prod(shape)) * item
    if nbytes != want:
        unit = "bytes" if item == 1 else "elements"
        raise _Bad(Status.BUFFER, f"{what}: {name} has {nbytes // item} {unit}, expected {want // item} for shape {shape}")
    key = (int(ffi.cast("uintptr_t", ptr)), want, np.dtype(dtype).char + str(shape))
    view = _views.get(key)
    if view is None:  # callers reuse their buffers: keep the last few views
        if len(_views) > 64:
            _views.clear()
        view = np.frombuffer(ffi.buffer(ffi.cast("char *", ptr), want), dtype).reshape(shape)
        _views[key] = view
    return view


def install(ffi: Any) -> None:
    """Define every ``extern "Python"`` function of the library (called by its init code)."""
    internal = int(Status.INTERNAL)

    def extern(fn: Callable | None = None, *, error: Any = internal, handle_arg: type | None = None):
        """Register ``fn`` for the ABI: exceptions become a status (and the last error) here."""

        def deco(f: Callable) -> Callable:
            def guarded(*args: Any) -> Any:
                handle = None
                try:
                    if handle_arg is not None:
                        _, handle = _lookup(ffi, args[0], handle_arg, f.__name__)
                        result = f(handle, *args[1:])
                    else:
                        result = f(*args)
                    if error == internal:  # a status call that succeeded clears the last errors
                        set_last_error("")
                        if handle is not None:
                            handle.error = ""
                    return result
                except _Bad as exc:
                    status, text = exc.status, str(exc)
                except BaseException as exc:  # noqa: BLE001 - nothing may cross the ABI
                    status, text = status_of(exc), f"{f.__name__}: {message_of(exc)}"
                set_last_error(text)
                if handle is not None:
                    handle.error = text
                if error is ffi.NULL:
                    return _static_str(ffi, "diffvos: internal error")
                return int(status) if error == internal else error

            ffi.def_extern(name="dvpy_" + f.__name__, error=error)(guarded)
            return f

        return deco(fn) if fn is not None else deco

    def _text(ptr: Any, default: str) -> str:
        return default if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")

    def _out(ptr: Any, what: str) -> None:
        if ptr == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, f"{what}: an out pointer is NULL")

    @extern
    def ping():
        return 1

    @extern(error=ffi.NULL)
    def diffvos_version():
        from diffvos import __version__

        return _static_str(ffi, __version__)

    @extern(error=ffi.NULL)
    def diffvos_last_error():
        _tls.error = ffi.new("char[]", last_error().encode("utf-8", "replace"))
        return _tls.error

    @extern
    def diffvos_available_backends(out):
        from diffvos.runtime.backends import available_backends

        _out(out, "diffvos_available_backends")
        out[0] = _static_str(ffi, ",".join(available_backends()))
        return 0

    @extern
    def diffvos_runtime_options_init(o):
        _out(o, "diffvos_runtime_options_init")
        d = RuntimeConfig()
        o.backend, o.threads, o.verify_files = _static_str(ffi, d.backend), d.threads, int(d.verify_files)
        o.allow_failed_calibration = int(d.allow_failed_calibration)
        return 0

    @extern
    def diffvos_session_options_init(o):
        _out(o, "diffvos_session_options_init")
        d, p = SessionConfig(), PropagationConfig()
        o.color, o.concurrency = COLORS.index(d.color), CONCURRENCY.index(d.concurrency)
        o.memory, o.topk, o.radius, o.temperature = p.memory, p.topk, p.radius, p.temperature
        o.mag_filter = _static_str(ffi, p.mag_filter)
        o.seed, o.fresh_noise = d.seed, int(d.fresh_noise)
        o.head_weights, o.propagation_kernel = _static_str(ffi, p.head_weights), _static_str(ffi, p.propagation_kernel)
        o.inversion_steps = d.inversion_steps
        return 0

    @extern
    def diffvos_runtime_create(bundle, options, out):
        what = "diffvos_runtime_create"
        _out(out, what)
        out[0] = ffi.NULL
        if bundle == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, f"{what}: bundle_dir is NULL")
        d = RuntimeConfig()
        kwargs = {} if options == ffi.NULL else {
            "backend": _text(options.backend, d.backend), "threads": int(options.threads),
            "verify_files": bool(options.verify_files),
            "allow_failed_calibration": bool(options.allow_failed_calibration)}
        out[0] = _register(ffi, Runtime(_text(bundle, ""), **kwargs), "diffvos_runtime *")
        return 0

    def _destroy(h: _Handle) -> int:
        h.obj.close()
        _forget(h)
        return 0

    @extern(handle_arg=Runtime)
    def diffvos_runtime_destroy(h):
        return _destroy(h)

    @extern(handle_arg=Runtime)
    def diffvos_runtime_provider(h, out):
        _out(out, "diffvos_runtime_provider")
        out[0] = _keep(ffi, h, "provider", h.obj.provider)
        return 0

    @extern(handle_arg=Runtime)
    def diffvos_runtime_metadata_json(h, out):
        _out(out, "diffvos_runtime_metadata_json")
        out[0] = h.strings.get("metadata") or _keep(ffi, h, "metadata", json.dumps(h.obj.manifest.to_dict()))
        return 0

    def _last_error(ptr: Any, kind: type, what: str) -> Any:
        """A handle's last failure; an unknown handle gets a static message saying so."""
        try:
            _, h = _lookup(ffi, ptr, kind, what)
        except _Bad as exc:
            return _static_str(ffi, str(exc))
        return _keep(ffi, h, "error", h.error)

    @extern(error=ffi.NULL)
    def diffvos_runtime_last_error(rt):
        return _last_error(rt, Runtime, "diffvos_runtime_last_error")

    @extern(handle_arg=Runtime)
    def diffvos_session_create(h, width, height, options, out):
        what = "diffvos_session_create"
        _out(out, what)
        out[0] = ffi.NULL
        kwargs: dict[str, Any] = {}
        if options != ffi.NULL:
            if not (0 <= options.color < len(COLORS) and 0 <= options.concurrency < len(CONCURRENCY)):
                raise _Bad(Status.INVALID_ARGUMENT, f"{what}: color must be 0 (BGR) or 1 (RGB) and concurrency 0 or 1, "
                                                    f"got {options.color} and {options.concurrency}")
            kwargs = {
                "color": COLORS[options.color], "concurrency": CONCURRENCY[options.concurrency],
                "memory": int(options.memory), "topk": int(options.topk), "radius": int(options.radius),
                "temperature": float(options.temperature),
                "mag_filter": _text(options.mag_filter, PropagationConfig().mag_filter),
                "seed": int(options.seed), "fresh_noise": bool(options.fresh_noise),
                "head_weights": _text(options.head_weights, PropagationConfig().head_weights),
                "propagation_kernel": _text(options.propagation_kernel, PropagationConfig().propagation_kernel),
                "inversion_steps": int(options.inversion_steps),
            }
        out[0] = _register(ffi, h.obj.session(int(width), int(height), **kwargs), "diffvos_session *")
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_destroy(h):
        return _destroy(h)

    def _frame(s: Session, frame: Any, frame_bytes: int, what: str) -> np.ndarray:
        return _array(ffi, frame, frame_bytes, np.uint8, (s.height, s.width, 3), "frame", what)

    def _labels(s: Session, ptr: Any, nbytes: int, name: str, what: str) -> np.ndarray:
        return _array(ffi, ptr, nbytes, np.uint8, (s.height, s.width), name, what)

    @extern(handle_arg=Session)
    def diffvos_session_add_objects(h, frame, frame_bytes, labels, labels_bytes, out, out_bytes):
        what, s = "diffvos_session_add_objects", h.obj
        f = _frame(s, frame, frame_bytes, what)
        m = _labels(s, labels, labels_bytes, "labels", what)
        o = None if out == ffi.NULL else _labels(s, out, out_bytes, "out_labels", what)
        s.step(f, out=o, mask=m)
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_track(h, frame, frame_bytes, out, out_bytes, probs, probs_count):
        what, s = "diffvos_session_track", h.obj
        f = _frame(s, frame, frame_bytes, what)
        o = _labels(s, out, out_bytes, "out_labels", what)
        p = None
        if probs != ffi.NULL:
            p = _array(ffi, probs, probs_count * 4, np.float32, s.info.prob_shape, "out_probs", what)
        s.step(f, out=o, probs=p)
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_remove_object(h, object_id):
        h.obj.remove(int(object_id))
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_reset(h):
        h.obj.reset()
        return 0

    def _info(h: _Handle, what: str, *outs: Any):
        for o in outs:
            _out(o, what)
        return h.obj.info

    @extern(handle_arg=Session)
    def diffvos_session_num_objects(h, out):
        out[0] = len(_info(h, "diffvos_session_num_objects", out).object_ids)
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_object_ids(h, ids, capacity, count):
        info = _info(h, "diffvos_session_object_ids", count)
        if ids == ffi.NULL and capacity > 0:
            raise _Bad(Status.BUFFER, "diffvos_session_object_ids: ids is NULL with a nonzero capacity")
        for i, oid in enumerate(info.object_ids[:capacity]):
            ids[i] = oid
        count[0] = len(info.object_ids)
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_prob_shape(h, channels, grid_h, grid_w):
        channels[0], grid_h[0], grid_w[0] = _info(h, "diffvos_session_prob_shape", channels, grid_h, grid_w).prob_shape
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_timings(h, out):
        info = _info(h, "diffvos_session_timings", out)
        for name in TIMINGS:
            setattr(out, name, float(info.timings.get(name, 0.0)))
        return 0

    @extern(handle_arg=Session)
    def diffvos_session_memory_bytes(h, out):
        out[0] = _info(h, "diffvos_session_memory_bytes", out).memory_bytes
        return 0

    @extern(error=ffi.NULL)
    def diffvos_session_last_error(sp):
        return _last_error(sp, Session, "diffvos_session_last_error")


def _forget(handle: _Handle) -> None:
    """Drop a handle and its strings: later use of it returns INVALID_HANDLE."""
    with _table_lock:
        for key, h in list(_table.items()):
            if h is handle:
                del _table[key]
