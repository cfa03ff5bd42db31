"""Execution-provider selection for ONNX Runtime, with the truth about what really runs.

onnxruntime-gpu lists the TensorRT and CUDA providers even on a machine without a GPU; the
TensorRT provider then raises at session creation and the CUDA provider silently falls back to
the CPU. So we try each candidate chain in order, ask the session which providers it really
holds (``session.get_providers()``) and tell the user once, in one line, when the GPU was wanted
but the CPU is what runs.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The user-facing names of backends, mapped to ONNX Runtime provider chains (best first).
BACKENDS = ("auto", "tensorrt", "cuda", "cpu")
_PROVIDER = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass
class ProviderChoice:
    requested: str
    active: str  # the provider that really runs the graph
    providers: list[str] = field(default_factory=list)  # what the session reports
    note: str | None = None  # the one line telling the user about a fallback


def candidate_chains(backend: str, available: list[str]) -> list[list[str]]:
    """Provider chains to try for ``backend``, best first, each ending on the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    order = ["tensorrt", "cuda"] if backend == "auto" else ([backend] if backend != "cpu" else [])
    chains = []
    for name in order:
        if _PROVIDER[name] in available:
            chains.append([_PROVIDER[n] for n in order[order.index(name):]] + [_PROVIDER["cpu"]])
    chains.append([_PROVIDER["cpu"]])
    return chains


def provider_options(provider: str, cache_dir: Path | None, fp16: bool = False) -> dict[str, Any]:
    """Options for a provider: the TensorRT EP gets an engine cache so it builds once per GPU."""
    if provider == _PROVIDER["tensorrt"] and cache_dir is not None:
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_fp16_enable": bool(fp16),
        }
    return {}


def create_session(
    model_path: str | Path,
    backend: str = "auto",
    threads: int = 0,
    cache_dir: Path | None = None,
    fp16: bool = False,
) -> tuple[Any, ProviderChoice]:
    """Create an ``onnxruntime.InferenceSession`` on the best provider that really works."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # its own fallback errors are replaced by our one line
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    chains = candidate_chains(backend, available)
    desired = chains[0][0]
    last_error: Exception | None = None
    for chain in chains:
        opts = [provider_options(p, cache_dir, fp16) for p in chain]
        try:
            # onnxruntime prints its own provider fallback to stdout; we report it in one line instead
            with contextlib.redirect_stdout(io.StringIO()):
                session = ort.InferenceSession(str(model_path), options, providers=chain, provider_options=opts)
        except Exception as exc:  # noqa: BLE001 - a provider that cannot start: try the next chain
            last_error = exc
            continue
        active = session.get_providers()
        choice = ProviderChoice(requested=backend, active=active[0], providers=active)
        if active[0] != desired:
            choice.note = (
                f"diffvos: {desired} is not usable here (no GPU, or CUDA/TensorRT libraries missing); "
                f"running on {active[0]}"
            )
        return session, choice
    raise RuntimeError(f"ONNX Runtime could not create a session for {model_path}: {last_error}")


def announce(choice: ProviderChoice, stream=None) -> None:
    """Print the fallback note once per process (a tracker may open several sessions)."""
    global _announced
    if choice.note and choice.note not in _announced:
        _announced.add(choice.note)
        print(choice.note, file=stream or sys.stderr)


_announced: set[str] = set()
