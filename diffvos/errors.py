"""The exceptions users see, as ONNX Runtime's Python API raises them: typed, with a message that
names the file or option and the problem, so a CLI prints it as is. Status codes exist only at
the C boundary (``diffvos.runtime.capi.status`` maps these types to ``diffvos_status``)."""

from __future__ import annotations

from pathlib import Path


class DiffvosError(Exception):
    """Base class: an expected failure with a message meant for the user (no traceback needed)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(DiffvosError, ValueError):
    """Bad user input: a video, frame folder, mask, option or argument that cannot be used."""


class DecodeError(InputError):
    """A frame that does not decode, or decodes damaged (truncated JPEG, corrupt video)."""

    def __init__(self, message: str, path: str | Path | None = None, index: int | None = None) -> None:
        self.index = index
        super().__init__(message, path)


class InvalidBufferError(InputError):
    """A caller buffer of the wrong type, dtype, shape, layout or writeability; nothing was written."""


class BundleError(DiffvosError):
    """A bundle that is missing, corrupted, from a newer schema or built for another machine."""


class BackendError(DiffvosError):
    """The execution backend (ONNX Runtime, TensorRT) could not create or run a graph."""


class NotStartedError(DiffvosError):
    """A frame was stepped before any object was given."""


class NoSuchObjectError(DiffvosError):
    """An object id the session does not track."""


class BusyError(DiffvosError):
    """A session created with ``concurrency="refuse"`` is in use by another thread."""


class ClosedError(DiffvosError):
    """A runtime or session used after ``close()``."""


class CheckpointError(DiffvosError):
    """A checkpoint that is missing, unreadable or does not match the model."""


class ExportError(DiffvosError):
    """An export that cannot be done (bad layer, bad size) or failed verification."""


class OutputError(DiffvosError):
    """An output location that cannot be written."""
