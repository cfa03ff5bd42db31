"""What ONNX Runtime says when a provider does not start, captured and turned into one line.

ONNX Runtime's exception for a provider that cannot start is generic ("Please install TensorRT
libraries ...") and the CUDA provider raises nothing at all: it is dropped and the session runs on
the CPU. The real cause ("Failed to load library libonnxruntime_providers_cuda.so with error:
libcublasLt.so.13: cannot open shared object file", TensorRT's "int8 is not configured in the
builder") is printed by the native logger on file descriptor 2, outside Python's ``sys.stderr``.
:func:`capture_native_output` catches what is written there (through
:func:`diffvos.io.native_log.capture_fd2`, the one capture of the descriptor) and on Python's
streams during session creation and the first run; :func:`provider_messages` extracts ONNX
Runtime's error lines.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import Iterator

from diffvos.io.native_log import Captured, capture_fd2

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# [E:onnxruntime:Default, provider_bridge_ort.cc:2430 operator()] message
_LINE = re.compile(r"\[([VIWEF]):onnxruntime:[^\]]*\]\s*(.*)")
_PREFIX = re.compile(r"^.*?\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE = re.compile(r"^\S+\.(?:cc|cpp|h):\d+\s+.*?\)\s+")  # "/src/x.cc:729 void f(args) " before a message
_LIBPATH = re.compile(r"(?:/[^\s/:]+)+/([^\s/]+\.so[\w.]*)")


@contextlib.contextmanager
def capture_native_output() -> Iterator[Captured]:
    """Collect what is written to fd 2 and to Python's stdout/stderr inside the block. Lines that
    are not ONNX Runtime log lines are written back to stderr afterwards (nothing else is lost)."""
    captured, native = Captured(), Captured()
    py_out, py_err = io.StringIO(), io.StringIO()
    try:
        with capture_fd2() as native, contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
            yield captured
    finally:
        captured.text = native.text + py_out.getvalue() + py_err.getvalue()
        others = [ln for ln in _ANSI.sub("", captured.text).splitlines() if ln.strip() and not _LINE.search(ln)]
        if others:
            print("\n".join(others), file=sys.stderr)


def provider_messages(text: str, levels: str = "EF") -> list[str]:
    """ONNX Runtime's log lines at ``levels`` in ``text``, each shortened to its message (source
    locations, error-code prefixes and library directories removed), duplicates dropped."""
    out: list[str] = []
    for line in _ANSI.sub("", text).splitlines():
        m = _LINE.search(line)
        if not m or m.group(1) not in levels:
            continue
        msg = _LIBPATH.sub(r"\1", _PREFIX.sub("", m.group(2).strip()))
        if msg and msg not in out:
            out.append(msg)
    return out


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    text = _PREFIX.sub("", text.splitlines()[0] if text else type(exc).__name__)
    text = _SOURCE.sub("", text)
    return _LIBPATH.sub(r"\1", text)
