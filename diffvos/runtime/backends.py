"""Backend name -> lazy engine loaders for every graph of a bundle (the one place that decides)."""

from __future__ import annotations

from pathlib import Path

from diffvos.bundle import Manifest
from diffvos.config import NATIVE_TENSORRT, ORT_PROVIDERS, RuntimeConfig
from diffvos.runtime.engine import Loader
from diffvos.runtime.ort_engine import OrtLoader
from diffvos.runtime.trt_engine import TrtPlanLoader


def loaders_for(bundle: str | Path, manifest: Manifest, config: RuntimeConfig) -> dict[str, Loader]:
    """One loader per graph: native TensorRT plans for ``trt``, ONNX Runtime otherwise."""
    bundle = Path(bundle)
    if config.backend == NATIVE_TENSORRT:
        return {name: TrtPlanLoader(bundle, manifest, name) for name in manifest.graphs}
    return {
        name: OrtLoader(bundle / entry.file, backend=config.backend, threads=config.threads,
                        cache_dir=bundle / "trt_cache", fp16=manifest.precision == "fp16")
        for name, entry in manifest.graphs.items()
    }


def available_backends() -> list[str]:
    """ONNX Runtime backends this machine's build offers (a listed GPU backend may still fall back)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [name for name, provider in ORT_PROVIDERS.items() if provider in have]
