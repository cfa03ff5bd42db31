"""Backend name -> lazy engine loaders for every graph of a bundle (the one place that decides)."""

from __future__ import annotations

from pathlib import Path

from diffvos.bundle import Manifest
from diffvos.bundle.sizes import graph_profile
from diffvos.config import NATIVE_TENSORRT, ORT_PROVIDERS, RuntimeConfig
from diffvos.errors import InputError
from diffvos.runtime.engine import Loader
from diffvos.runtime.ort_engine import OrtLoader
from diffvos.runtime.ort_options import GpuOptions
from diffvos.runtime.trt_engine import TrtPlanLoader


def gpu_options(manifest: Manifest, graph: str) -> GpuOptions:
    """What ONNX Runtime's GPU providers need to know about a bundle graph: its precision, the
    optimisation profile of a dynamic graph (the size rule's default range) and its sha256 (the
    engine cache key)."""
    entry = manifest.graphs[graph]
    profile = None
    if manifest.dynamic:
        try:
            profile = graph_profile(manifest, graph)
        except InputError:  # no size range recorded: ONNX Runtime then sizes engines to the shapes it sees
            profile = None
    return GpuOptions(precision=entry.precision, input_name=entry.input_name, profile=profile,
                      graph_sha256=entry.sha256)


def loaders_for(bundle: str | Path, manifest: Manifest, config: RuntimeConfig) -> dict[str, Loader]:
    """One loader per graph: native TensorRT plans for ``trt``, ONNX Runtime otherwise."""
    bundle = Path(bundle)
    if config.backend == NATIVE_TENSORRT:
        return {name: TrtPlanLoader(bundle, manifest, name) for name in manifest.graphs}
    return {
        name: OrtLoader(bundle / entry.file, backend=config.backend, threads=config.threads,
                        gpu=gpu_options(manifest, name))
        for name, entry in manifest.graphs.items()
    }


def available_backends() -> list[str]:
    """ONNX Runtime backends this machine's build offers (a listed GPU backend may still fall back)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [name for name, provider in ORT_PROVIDERS.items() if provider in have]
