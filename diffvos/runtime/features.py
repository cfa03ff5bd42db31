"""Frame -> feature map: preprocessing, noise injection and the bundle's graph(s) on ONNX Runtime.

A Stable Diffusion bundle runs VAE encoder -> noise (in latent space) -> U-Net; the pixel-space
backbones run noise -> feature graph.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from diffvos.runtime.bundle import FEATURES_GRAPH, VAE_GRAPH, Manifest, read_manifest
from diffvos.runtime.noise import NoiseInjector
from diffvos.runtime.preprocess import input_size, to_model_input
from diffvos.runtime.providers import ProviderChoice, announce, create_session


class FeatureExtractor:
    """Owns the ONNX Runtime sessions of one bundle. Sessions are thread-safe for ``run``;
    the per-call buffers are not, so use one extractor per thread (or lock)."""

    def __init__(
        self,
        bundle: str | Path,
        backend: str = "auto",
        threads: int = 0,
        seed: int = 0,
        fresh_noise: bool = False,
        verify_files: bool = True,
        quiet: bool = False,
    ) -> None:
        self.bundle = Path(bundle)
        self.manifest: Manifest = read_manifest(self.bundle, verify_files=verify_files)
        m = self.manifest
        cache = self.bundle / "trt_cache"
        fp16 = m.precision == "fp16"
        self.session, self.provider = self._open(FEATURES_GRAPH, backend, threads, cache, fp16)
        self.vae = None
        if m.latent is not None:
            self.vae, _ = self._open(VAE_GRAPH, backend, threads, cache, fp16)
        if not quiet:
            announce(self.provider)
        self.seed = seed
        self.fresh_noise = fresh_noise
        self._noise: dict[tuple[int, int], NoiseInjector] = {}
        self._x0: dict[tuple[int, int], np.ndarray] = {}
        self._in_name = self.session.get_inputs()[0].name
        self._out_name = self.session.get_outputs()[0].name
        self.timings: dict[str, float] = {}

    def fork(self, seed: int | None = None, fresh_noise: bool | None = None) -> "FeatureExtractor":
        """A copy sharing the loaded sessions (one engine, many streams) with its own buffers."""
        twin = copy.copy(self)
        twin.seed = self.seed if seed is None else seed
        twin.fresh_noise = self.fresh_noise if fresh_noise is None else fresh_noise
        twin._noise, twin._x0, twin.timings = {}, {}, {}
        return twin

    def _open(self, graph: str, backend: str, threads: int, cache: Path, fp16: bool):
        if backend == "trt":  # native TensorRT: the plan built by `diffvos build-engine`
            from diffvos.runtime.trt_backend import open_trt_session

            session = open_trt_session(self.bundle, graph, self.manifest)
            return session, ProviderChoice("trt", session.get_providers()[0], session.get_providers())
        entry = self.manifest.graphs[graph]
        return create_session(self.bundle / entry.file, backend=backend, threads=threads, cache_dir=cache, fp16=fp16)

    @property
    def stride(self) -> int:
        return self.manifest.stride

    def input_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return input_size(self.manifest, frame_hw)

    def grid_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = self.input_size(frame_hw)
        return h // self.stride, w // self.stride

    def _injector(self, shape: tuple[int, ...]) -> NoiseInjector:
        key = shape[-2:]
        if key not in self._noise:
            m = self.manifest
            self._noise[key] = NoiseInjector(m.alpha_bar, m.ensemble, shape, seed=self.seed, fresh=self.fresh_noise)
        return self._noise[key]

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 BGR frame -> float32 features [C, h, w]. Records per-stage timings (ms)."""
        m = self.manifest
        t0 = time.perf_counter()
        size = self.input_size(bgr.shape[:2])
        if size not in self._x0:
            self._x0[size] = np.empty((3, *size), np.float32)
        x0 = to_model_input(bgr, size, m.preprocess, out=self._x0[size])
        t1 = time.perf_counter()
        if self.vae is not None:
            x0 = self.vae.run(None, {self.vae.get_inputs()[0].name: x0[None]})[0][0]
        t2 = time.perf_counter()
        x_t = self._injector(x0.shape)(x0)
        features = self.session.run([self._out_name], {self._in_name: x_t})[0][0]
        t3 = time.perf_counter()
        self.timings = {"preprocess_ms": (t1 - t0) * 1e3, "vae_ms": (t2 - t1) * 1e3, "features_ms": (t3 - t2) * 1e3}
        return features

    @property
    def provider_choice(self) -> ProviderChoice:
        return self.provider
