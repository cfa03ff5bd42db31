"""Status codes of the C ABI (``diffvos_status`` in diffvos.h) and the exception -> status mapping.

The Python API raises typed exceptions; only here, at the C boundary, do they become numbers,
with the last error's message kept per thread and per handle.
"""

from __future__ import annotations

import threading
from enum import IntEnum

from diffvos.errors import (
    BackendError,
    BundleError,
    BusyError,
    ClosedError,
    DiffvosError,
    InputError,
    InvalidBufferError,
    NoSuchObjectError,
    NotStartedError,
)


class Status(IntEnum):
    """Stable numeric status codes (``diffvos_status`` in diffvos.h)."""

    OK = 0
    NULL_HANDLE = 1  # a handle (or required argument) is NULL
    INVALID_HANDLE = 2  # destroyed, never created, or of the wrong kind
    INVALID_ARGUMENT = 3  # a bad option, size, object id or mask
    BUFFER = 4  # a buffer of the wrong shape, dtype, size or not writeable
    BUNDLE = 5  # bundle missing, corrupted or unsupported
    BACKEND = 6  # the execution backend could not create or run a graph
    NOT_STARTED = 7  # track before any object was added
    NO_SUCH_OBJECT = 8  # remove of an id the session does not track
    BUSY = 9  # session in use by another thread (concurrency="refuse")
    OUT_OF_MEMORY = 10
    RUNTIME = 11  # the embedded Python runtime could not start
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

# most specific first: InvalidBufferError is an InputError
_BY_TYPE: tuple[tuple[type[BaseException], Status], ...] = (
    (MemoryError, Status.OUT_OF_MEMORY),
    (InvalidBufferError, Status.BUFFER),
    (BundleError, Status.BUNDLE),
    (BackendError, Status.BACKEND),
    (NotStartedError, Status.NOT_STARTED),
    (NoSuchObjectError, Status.NO_SUCH_OBJECT),
    (BusyError, Status.BUSY),
    (ClosedError, Status.INVALID_HANDLE),
    (InputError, Status.INVALID_ARGUMENT),
    (DiffvosError, Status.INVALID_ARGUMENT),
)


def status_of(exc: BaseException) -> Status:
    for kind, status in _BY_TYPE:
        if isinstance(exc, kind):
            return status
    return Status.INTERNAL


def message_of(exc: BaseException) -> str:
    """The user's message; a bug's message also names the exception type."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, DiffvosError) else f"{type(exc).__name__}: {text}"


_tls = threading.local()


def set_last_error(message: str) -> None:
    _tls.message = message


def last_error() -> str:
    """The message of this thread's last failing call ("" if none yet)."""
    return getattr(_tls, "message", "")
