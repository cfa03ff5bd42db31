"""The error types users see. Each names the file and the problem, so a CLI can print it as is."""

from __future__ import annotations

from pathlib import Path


class DiffvosError(Exception):
    """Base class: an expected failure with a message meant for the user (no traceback needed)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(DiffvosError):
    """Bad user input: a video, frame folder, mask or option that cannot be used."""


class BundleError(DiffvosError):
    """A bundle that is missing, corrupted, from a newer schema or built for another machine."""


class CheckpointError(DiffvosError):
    """A checkpoint that is missing, unreadable or does not match the model."""


class ExportError(DiffvosError):
    """An export that cannot be done (bad layer, bad size) or failed verification."""


class OutputError(DiffvosError):
    """An output location that cannot be written."""
