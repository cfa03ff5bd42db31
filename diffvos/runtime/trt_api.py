"""The TensorRT Python module as diffvos uses it: import, a logger that keeps what TensorRT said,
and object factories whose failure says why.

Written against the API common to TensorRT 10.x and 11.x (checked against the real bindings of
10.3 and 11.4 in tests/test_trt_bindings.py): named I/O tensors, strongly typed networks, no
builder precision flags or calibrators (removed in 11).

Without a usable GPU, libnvinfer returns NULL from its factories and the bindings raise a bare
``TypeError: pybind11::init(): factory function returned nullptr``; libnvinfer logs the cause
first ("CUDA initialization failure with error: 35 ..."), so :func:`create` reports it, with
what to check, as a :class:`~diffvos.errors.BackendError`.
"""

from __future__ import annotations

import sys
from typing import Any

from diffvos.errors import BackendError
from diffvos.runtime.install_hints import install_hint

# CUDA error numbers libnvinfer reports at initialisation, in words
CUDA_INIT_ERRORS = {
    "35": "the NVIDIA driver is missing or older than the CUDA this TensorRT was built for",
    "100": "no CUDA-capable device is visible",
    "999": "unknown CUDA error (a driver/device problem; reboot or check dmesg)",
    "804": "forward compatibility is not supported on this device",
}


def import_trt() -> Any:
    """``import tensorrt``, or a BackendError saying how to install it on this machine."""
    try:
        import tensorrt
    except ImportError as exc:  # also a bindings module whose libnvinfer.so.N is missing
        raise BackendError(f"the trt backend needs TensorRT's Python package ({exc}); {install_hint('tensorrt')}; "
                           "or use --backend tensorrt/cuda/cpu (ONNX Runtime)") from exc
    return tensorrt


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def make_logger(trt: Any, echo: str = "ERROR") -> Any:
    """A ``trt.ILogger`` that keeps every WARNING-or-worse message in ``.messages`` and prints
    those at ``echo`` or worse to stderr (``echo=""``: prints nothing)."""
    severity = trt.ILogger.Severity
    keep = int(severity.WARNING)
    shown = int(getattr(severity, echo)) if echo else -1

    class KeepingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 trampoline: the base __init__ is required
            self.messages: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if int(level) <= keep:
                self.messages.append(str(msg))
            if int(level) <= shown:
                print(f"[TensorRT] {getattr(level, 'name', level)}: {msg}", file=sys.stderr)

    return KeepingLogger()


def logged(logger: Any, last: int = 3) -> str:
    """The last messages a :func:`make_logger` logger kept, joined ('' for another logger)."""
    return "; ".join(getattr(logger, "messages", [])[-last:])


def create(trt: Any, what: str, logger: Any) -> Any:
    """``trt.<what>(logger)`` (``Builder`` or ``Runtime``); a NULL from libnvinfer becomes a
    BackendError naming the cause TensorRT logged and what to check."""
    try:
        return getattr(trt, what)(logger)
    except TypeError as exc:
        if "nullptr" not in str(exc):
            raise
        said = logged(logger)
        raise BackendError(
            f"TensorRT {trt.__version__} could not create its {what}: no usable CUDA GPU "
            f"({said or 'libnvinfer returned no object and logged nothing'}{_explain(said)}). "
            "Check that `nvidia-smi` lists the GPU, that the driver supports the CUDA major this TensorRT was "
            "built for, and that only one libnvinfer is on the library path (`diffvos doctor` shows all three); "
            "or use --backend cuda/cpu") from exc


def _explain(said: str) -> str:
    for code, meaning in CUDA_INIT_ERRORS.items():
        if f"error: {code}." in said or f"error: {code} " in said:
            return f": {meaning}"
    return ""


def engine_device_memory(engine: Any) -> int | None:
    """Device bytes one execution context of ``engine`` allocates (its activations); TensorRT 11
    has only the ``_v2`` name."""
    for name in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, name, None)
        if value is not None:
            return int(value)
    return None
