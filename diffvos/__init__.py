"""diffvos: zero-shot video object tracking with diffusion-model features.

``diffvos.Runtime(bundle)`` loads a bundle's engines; ``runtime.session(width, height)`` tracks
one stream with ``session.step(frame, mask=None)``. Subpackages: ``diffvos.export`` (torch side:
checkpoints to ONNX bundles), ``diffvos.calibration`` (INT8, TensorRT engines),
``diffvos.runtime`` (torch-free tracking), ``diffvos.bundle`` (the bundle contract),
``diffvos.io`` (frames, masks, overlays) and ``diffvos.evaluation`` (DAVIS scoring).
Names are imported on first use, so ``import diffvos`` (and the CLI) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Runtime": "diffvos.runtime.session",
    "Session": "diffvos.runtime.session",
    "RuntimeInfo": "diffvos.runtime.session",
    "SessionInfo": "diffvos.runtime.session",
    "PropagationConfig": "diffvos.config",
    "SessionConfig": "diffvos.config",
    "RuntimeConfig": "diffvos.config",
    **{name: "diffvos.errors" for name in (
        "DiffvosError", "InputError", "InvalidBufferError", "BundleError", "BackendError", "NotStartedError",
        "NoSuchObjectError", "BusyError", "ClosedError", "CheckpointError", "ExportError", "OutputError")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffvos' has no attribute {name!r}")
