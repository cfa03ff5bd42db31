"""Python side of the C ABI: each ``diffvos_*`` function of diffvos.h, mapped onto runtime/api.py.

Handles crossing the ABI are not pointers to Python objects: they are keys of a table, taken
from a counter that never repeats, cast to the opaque pointer types. A destroyed or forged
handle is therefore just an unknown key (``DIFFVOS_ERR_INVALID_HANDLE``), never a dangling
pointer. Caller buffers are wrapped as numpy arrays without copying (``ffi.buffer``) and passed
to the Python API, which validates and fills them.

Strings returned to C are cffi ``char[]`` objects kept alive here: per handle (provider,
metadata, last error) until the handle is destroyed, static ones for the process.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np

from diffvos.runtime import api
from diffvos.runtime.api import Status

_table: dict[int, Any] = {}  # key -> api.Runtime | api.Session
_strings: dict[int, dict[str, Any]] = {}  # key -> name -> char[] kept alive for the handle
_static: dict[str, Any] = {}  # process-lifetime strings
_keys = itertools.count(0x10000, 0x10)
_table_lock = threading.Lock()
_tls = threading.local()
_views: dict[tuple[int, int, str], np.ndarray] = {}  # (address, bytes, kind) -> array over it

_COLORS = {0: "BGR", 1: "RGB"}
_CONCURRENCY = {0: "serialize", 1: "refuse"}


def _static_str(ffi: Any, text: str) -> Any:
    if text not in _static:
        _static[text] = ffi.new("char[]", text.encode("utf-8", "replace"))
    return _static[text]


def _handle_str(ffi: Any, key: int, name: str, text: str) -> Any:
    buf = ffi.new("char[]", text.encode("utf-8", "replace"))
    _strings.setdefault(key, {})[name] = buf
    return buf


def _forget(key: int) -> None:
    """Drop a handle and its cached strings: later use of it returns INVALID_HANDLE."""
    with _table_lock:
        _table.pop(key, None)
    _strings.pop(key, None)


def _register(ffi: Any, obj: Any, ctype: str) -> Any:
    with _table_lock:
        key = next(_keys)
        _table[key] = obj
    return ffi.cast(ctype, key)


def _reject(status: Status, message: str) -> int:
    api._fail(None, status, message)
    return int(status)


class _Bad(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def _lookup(ffi: Any, ptr: Any, kind: type, what: str) -> tuple[int, Any]:
    if ptr == ffi.NULL:
        raise _Bad(Status.NULL_HANDLE, f"{what}: the {kind.__name__.lower()} handle is NULL")
    key = int(ffi.cast("uintptr_t", ptr))
    obj = _table.get(key)
    if obj is None:
        raise _Bad(Status.INVALID_HANDLE, f"{what}: unknown {kind.__name__.lower()} handle (destroyed or never created)")
    if not isinstance(obj, kind):
        raise _Bad(Status.INVALID_HANDLE, f"{what}: this handle is a {type(obj).__name__}, not a {kind.__name__}")
    return key, obj


def _array(ffi: Any, ptr: Any, nbytes: int, dtype: Any, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """A numpy view of a caller buffer, after checking its pointer and size (no copy)."""
    if ptr == ffi.NULL:
        raise _Bad(Status.BUFFER, f"{what}: {name} is NULL")
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes != want:
        unit = "bytes" if np.dtype(dtype).itemsize == 1 else "elements"
        n = nbytes // np.dtype(dtype).itemsize
        raise _Bad(Status.BUFFER, f"{what}: {name} has {n} {unit}, expected {want // np.dtype(dtype).itemsize} for shape {shape}")
    key = (int(ffi.cast("uintptr_t", ptr)), want, np.dtype(dtype).char + str(shape))
    view = _views.get(key)
    if view is None:  # callers reuse their buffers: keep the last few views
        if len(_views) > 64:
            _views.clear()
        view = np.frombuffer(ffi.buffer(ffi.cast("char *", ptr), want), dtype).reshape(shape)
        _views[key] = view
    return view


def _session_result(ffi: Any, key: int, s: api.Session, status: Status) -> int:
    if status != Status.OK and key in _table:
        _handle_str(ffi, key, "error", api.session_last_error(s))
    return int(status)


def install(ffi: Any) -> None:
    """Define every ``extern "Python"`` function of the library (called by its init code)."""
    internal = int(Status.INTERNAL)

    def extern(fn=None, *, error: Any = internal):
        def deco(f):
            name = "dvpy_" + f.__name__

            def guarded(*args):
                try:
                    return f(*args)
                except _Bad as exc:
                    return _reject(exc.status, str(exc))
                except BaseException as exc:  # noqa: BLE001 - nothing may cross the ABI
                    api._fail(None, Status.INTERNAL, f"{f.__name__}: {type(exc).__name__}: {exc}")
                    return error if error is not ffi.NULL else _static_str(ffi, "diffvos: internal error")

            ffi.def_extern(name=name, error=error)(guarded)
            return f

        return deco(fn) if fn is not None else deco

    @extern
    def ping():
        return 1

    @extern(error=ffi.NULL)
    def diffvos_version():
        return _static_str(ffi, api.version())

    @extern(error=ffi.NULL)
    def diffvos_last_error():
        _tls.error = ffi.new("char[]", api.last_error().encode("utf-8", "replace"))
        return _tls.error

    @extern
    def diffvos_available_backends(out):
        if out == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, "diffvos_available_backends: out is NULL")
        out[0] = _static_str(ffi, ",".join(api.available_backends()))
        return 0

    @extern
    def diffvos_runtime_options_init(o):
        if o == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, "diffvos_runtime_options_init: options is NULL")
        d = api.RuntimeOptions()
        o.backend = _static_str(ffi, d.backend)
        o.threads = d.threads
        o.verify_files = int(d.verify_files)
        return 0

    @extern
    def diffvos_session_options_init(o):
        if o == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, "diffvos_session_options_init: options is NULL")
        d = api.SessionOptions()
        o.color = {v: k for k, v in _COLORS.items()}[d.color]
        o.concurrency = {v: k for k, v in _CONCURRENCY.items()}[d.concurrency]
        o.memory, o.topk, o.radius, o.temperature = d.memory, d.topk, d.radius, d.temperature
        o.mag_filter = _static_str(ffi, d.mag_filter)
        o.seed, o.fresh_noise = d.seed, int(d.fresh_noise)
        return 0

    def _text(ptr, default: str) -> str:
        return default if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")

    @extern
    def diffvos_runtime_create(bundle, options, out):
        what = "diffvos_runtime_create"
        if out == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, f"{what}: out is NULL")
        out[0] = ffi.NULL
        if bundle == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, f"{what}: bundle_dir is NULL")
        opts = api.RuntimeOptions()
        if options != ffi.NULL:
            opts = api.RuntimeOptions(backend=_text(options.backend, "auto"), threads=int(options.threads),
                                      verify_files=bool(options.verify_files))
        status, rt = api.runtime_create(_text(bundle, ""), opts)
        if status == Status.OK:
            out[0] = _register(ffi, rt, "diffvos_runtime *")
        return int(status)

    @extern
    def diffvos_runtime_destroy(rt):
        key, obj = _lookup(ffi, rt, api.Runtime, "diffvos_runtime_destroy")
        _forget(key)
        return int(api.runtime_destroy(obj))

    @extern
    def diffvos_runtime_provider(rt, out):
        key, obj = _lookup(ffi, rt, api.Runtime, "diffvos_runtime_provider")
        if out == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, "diffvos_runtime_provider: out is NULL")
        status, info = api.runtime_info(obj)
        if status == Status.OK:
            out[0] = _handle_str(ffi, key, "provider", info.provider)
        return int(status)

    @extern
    def diffvos_runtime_metadata_json(rt, out):
        key, obj = _lookup(ffi, rt, api.Runtime, "diffvos_runtime_metadata_json")
        if out == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, "diffvos_runtime_metadata_json: out is NULL")
        out[0] = _strings.get(key, {}).get("metadata") or _handle_str(ffi, key, "metadata", api.runtime_metadata_json(obj))
        return 0

    @extern(error=ffi.NULL)
    def diffvos_runtime_last_error(rt):
        try:
            key, obj = _lookup(ffi, rt, api.Runtime, "diffvos_runtime_last_error")
        except _Bad as exc:
            return _static_str(ffi, str(exc))
        return _handle_str(ffi, key, "error", api.runtime_last_error(obj))

    @extern
    def diffvos_session_create(rt, width, height, options, out):
        what = "diffvos_session_create"
        if out == ffi.NULL:
            raise _Bad(Status.NULL_HANDLE, f"{what}: out is NULL")
        out[0] = ffi.NULL
        key, runtime = _lookup(ffi, rt, api.Runtime, what)
        opts = api.SessionOptions()
        if options != ffi.NULL:
            if options.color not in _COLORS or options.concurrency not in _CONCURRENCY:
                raise _Bad(Status.INVALID_ARGUMENT, f"{what}: color must be 0 (BGR) or 1 (RGB) and concurrency 0 or 1, "
                                                    f"got {options.color} and {options.concurrency}")
            opts = api.SessionOptions(
                color=_COLORS[options.color], concurrency=_CONCURRENCY[options.concurrency],
                memory=int(options.memory), topk=int(options.topk), radius=int(options.radius),
                temperature=float(options.temperature), mag_filter=_text(options.mag_filter, opts.mag_filter),
                seed=int(options.seed), fresh_noise=bool(options.fresh_noise),
            )
        status, session = api.session_create(runtime, int(width), int(height), opts)
        if status == Status.OK:
            out[0] = _register(ffi, session, "diffvos_session *")
        else:
            _handle_str(ffi, key, "error", api.last_error())
            runtime._last_error = api.last_error()
        return int(status)

    @extern
    def diffvos_session_destroy(sp):
        key, s = _lookup(ffi, sp, api.Session, "diffvos_session_destroy")
        _forget(key)
        return int(api.session_destroy(s))

    def _frame(s, frame, frame_bytes, what):
        return _array(ffi, frame, frame_bytes, np.uint8, (s.height, s.width, 3), "frame", what)

    @extern
    def diffvos_session_add_objects(sp, frame, frame_bytes, labels, labels_bytes, out, out_bytes):
        what = "diffvos_session_add_objects"
        key, s = _lookup(ffi, sp, api.Session, what)
        try:
            f = _frame(s, frame, frame_bytes, what)
            m = _array(ffi, labels, labels_bytes, np.uint8, (s.height, s.width), "labels", what)
            o = None if out == ffi.NULL else _array(ffi, out, out_bytes, np.uint8, (s.height, s.width), "out_labels", what)
        except _Bad as exc:
            s._last_error = str(exc)
            return _session_result(ffi, key, s, Status(_reject(exc.status, str(exc))))
        return _session_result(ffi, key, s, api.session_add_objects(s, f, m, o))

    @extern
    def diffvos_session_track(sp, frame, frame_bytes, out, out_bytes, probs, probs_count):
        what = "diffvos_session_track"
        key, s = _lookup(ffi, sp, api.Session, what)
        try:
            f = _frame(s, frame, frame_bytes, what)
            o = _array(ffi, out, out_bytes, np.uint8, (s.height, s.width), "out_labels", what)
            p = None
            if probs != ffi.NULL:
                shape = (len(s._ids) + 1, *s._grid)
                p = _array(ffi, probs, probs_count * 4, np.float32, shape, "out_probs", what)
        except _Bad as exc:
            s._last_error = str(exc)
            return _session_result(ffi, key, s, Status(_reject(exc.status, str(exc))))
        return _session_result(ffi, key, s, api.session_track(s, f, o, p))

    @extern
    def diffvos_session_remove_object(sp, object_id):
        key, s = _lookup(ffi, sp, api.Session, "diffvos_session_remove_object")
        return _session_result(ffi, key, s, api.session_remove_object(s, int(object_id)))

    @extern
    def diffvos_session_reset(sp):
        key, s = _lookup(ffi, sp, api.Session, "diffvos_session_reset")
        return _session_result(ffi, key, s, api.session_reset(s))

    def _info(sp, what, *outs):
        key, s = _lookup(ffi, sp, api.Session, what)
        if any(o == ffi.NULL for o in outs):
            raise _Bad(Status.NULL_HANDLE, f"{what}: an out pointer is NULL")
        status, info = api.session_info(s)
        if status != Status.OK:
            raise _Bad(status, api.last_error())
        return info

    @extern
    def diffvos_session_num_objects(sp, out):
        out[0] = len(_info(sp, "diffvos_session_num_objects", out).object_ids)
        return 0

    @extern
    def diffvos_session_object_ids(sp, ids, capacity, count):
        info = _info(sp, "diffvos_session_object_ids", count)
        if ids == ffi.NULL and capacity > 0:
            raise _Bad(Status.BUFFER, "diffvos_session_object_ids: ids is NULL with a nonzero capacity")
        for i, oid in enumerate(info.object_ids[:capacity]):
            ids[i] = oid
        count[0] = len(info.object_ids)
        return 0

    @extern
    def diffvos_session_prob_shape(sp, channels, grid_h, grid_w):
        info = _info(sp, "diffvos_session_prob_shape", channels, grid_h, grid_w)
        channels[0], grid_h[0], grid_w[0] = info.prob_shape
        return 0

    @extern
    def diffvos_session_timings(sp, out):
        info = _info(sp, "diffvos_session_timings", out)
        for name in ("preprocess_ms", "vae_ms", "features_ms", "propagate_ms", "postprocess_ms", "total_ms"):
            setattr(out, name, float(info.timings.get(name, 0.0)))
        return 0

    @extern
    def diffvos_session_memory_bytes(sp, out):
        out[0] = _info(sp, "diffvos_session_memory_bytes", out).memory_bytes
        return 0

    @extern(error=ffi.NULL)
    def diffvos_session_last_error(sp):
        try:
            key, s = _lookup(ffi, sp, api.Session, "diffvos_session_last_error")
        except _Bad as exc:
            return _static_str(ffi, str(exc))
        return _handle_str(ffi, key, "error", api.session_last_error(s))
