"""``diffvos export-triton``: a bundle -> a Triton model repository for a stock ``tritonserver``.

Layout::

    REPO/diffvos_tracker/config.pbtxt     Python backend, sequence batcher (oldest strategy)
    REPO/diffvos_tracker/1/model.py       imports diffvos.serve.triton_model.TritonPythonModel
    REPO/diffvos_tracker/1/bundle/        a copy of the bundle (or a path parameter: --link-bundle)

The feature graph runs inside the Python backend through the diffvos runtime (ONNX Runtime or
TensorRT): the wheel's server ships no onnxruntime backend, and the tracker's state (memory bank,
objects) must live next to it. The sequence batcher gives each stream a Triton sequence (START /
END, idle expiry, the same instance for every request of a stream) and batches the requests of
concurrent streams into one ``execute``, where the feature graph runs once for all of them.
The server's Python environment needs diffvos and its dependencies (``EXECUTION_ENV_PATH``
names one, otherwise the stub's Python finds them through PATH).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffvos.bundle import read_manifest
from diffvos.config import SessionConfig
from diffvos.errors import InputError
from diffvos.io.atomic import staged_directory
from diffvos.serve import protocol as P

MODEL_PY = '''"""diffvos tracker for Triton's Python backend (written by diffvos export-triton)."""

from diffvos.serve.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class ServeOptions:
    """The served model's bounds and batching (``diffvos serve`` / ``export-triton`` options)."""

    max_streams: int = 16  # open streams per model instance; one more START gets 503/UNAVAILABLE
    idle_timeout_s: float = 30.0  # a stream with no request for this long is closed
    max_pixels: int = 1920 * 1088  # frames larger than this are refused (400/INVALID_ARGUMENT)
    max_batch: int = 8  # requests of different streams in one execute()
    queue_delay_us: int = 1000  # how long the batcher waits for more streams before running
    instances: int = 1  # model instances (each its own process, runtime and streams)
    backend: str = "auto"
    threads: int = 0
    session: dict[str, Any] = field(default_factory=dict)  # Session options (memory, topk, seed, ...)
    env_path: str | None = None  # EXECUTION_ENV_PATH for the stub

    def check(self) -> None:
        problems = [f"--{n.replace('_', '-')} must be >= 1, got {v}" for n, v in (
            ("max_streams", self.max_streams), ("max_pixels", self.max_pixels), ("max_batch", self.max_batch),
            ("instances", self.instances)) if v < 1]
        if self.idle_timeout_s <= 0:
            problems.append(f"--idle-timeout must be > 0 seconds, got {self.idle_timeout_s}")
        if self.queue_delay_us < 0:
            problems.append(f"--queue-delay-us must be >= 0, got {self.queue_delay_us}")
        if problems:
            raise InputError("; ".join(problems))
        SessionConfig.from_options(**self.session)  # names the bad option


def config_pbtxt(name: str, bundle_ref: str, options: ServeOptions) -> str:
    """The model's config.pbtxt (protobuf text format)."""
    def tensors(spec: dict[str, tuple[str, tuple[int, ...]]], optional: bool) -> str:
        rows = []
        for n, (dtype, dims) in spec.items():
            opt = " optional: true" if optional else ""
            rows.append(f'  {{ name: "{n}" data_type: TYPE_{dtype} dims: [ {", ".join(map(str, dims))} ]{opt} }}')
        return ",\n".join(rows)

    params = {
        P.P_BUNDLE: bundle_ref, P.P_MAX_STREAMS: str(options.max_streams), P.P_MAX_PIXELS: str(options.max_pixels),
        P.P_BACKEND: options.backend, P.P_THREADS: str(options.threads), P.P_SESSION: json.dumps(options.session),
    }
    if options.env_path:
        params[P.P_ENV] = options.env_path
    parameters = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}'
                           for k, v in params.items())
    # Triton bounds the sequences it schedules; above the model's own bound, so that one START too
    # many gets the model's clear 503 instead of waiting in Triton's backlog.
    candidates = 2 * options.max_streams * options.instances + 4
    controls = ",\n".join(
        f'    {{ name: "{n}" control [ {{ kind: CONTROL_SEQUENCE_{k} int32_false_true: [ 0, 1 ] }} ] }}'
        for n, k in ((P.START, "START"), (P.END, "END"), (P.READY, "READY")))
    return f"""name: "{name}"
backend: "python"
max_batch_size: {options.max_batch}
input [
{tensors(P.INPUTS, optional=True)}
]
output [
{tensors(P.OUTPUTS, optional=False)}
]
sequence_batching {{
  max_sequence_idle_microseconds: {int(options.idle_timeout_s * 1e6)}
  control_input [
{controls}
  ]
  oldest {{
    max_candidate_sequences: {candidates}
    preferred_batch_size: [ {options.max_batch} ]
    max_queue_delay_microseconds: {options.queue_delay_us}
  }}
}}
instance_group [ {{ kind: KIND_CPU count: {options.instances} }} ]
{parameters}
"""


def export_triton(bundle: str | Path, output: str | Path, options: ServeOptions | None = None, *,
                  model_name: str = P.MODEL_NAME, link_bundle: bool = False, force: bool = False) -> Path:
    """Write a model repository for ``bundle`` at ``output`` (atomically); returns the model folder.

    ``link_bundle``: refer to the bundle by its absolute path instead of copying it into the
    repository (``diffvos serve`` does this for its temporary repository).
    """
    options = options or ServeOptions()
    options.check()
    bundle = Path(bundle).absolute()
    read_manifest(bundle)  # a clear error now rather than at model load
    with staged_directory(output, force=force) as stage:
        model = stage / model_name
        version = model / "1"
        version.mkdir(parents=True)
        if link_bundle:
            ref = str(bundle)
        else:
            shutil.copytree(bundle, version / "bundle")
            ref = "bundle"
        (model / "config.pbtxt").write_text(config_pbtxt(model_name, ref, options))
        (version / "model.py").write_text(MODEL_PY)
    return Path(output) / model_name
