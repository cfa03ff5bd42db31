"""The published pipeline, reimplemented as the benchmarks' baseline (benchmark-only, uses torch).

How the published method runs (METHOD.md sections 1-2), without the project's deployment work:
PyTorch eager; every frame runs the *full* ADM U-Net forward (all 18 output blocks and the output
head) on an E-image batch and the chosen decoder block's output is caught by a forward hook;
noise is drawn per frame (or taken from a given bank, so that two pipelines can be compared on
the same draws); propagation builds the dense affinity of every query against every memory
position of every context frame and applies the dense (2r+1)^2 neighbourhood mask, then top-k
(ties kept), normalisation and the mask product (the dense reference of
``propagation.dense_step``, reused here); the memory is a Python list concatenated every
frame; resizing uses PIL (frames bilinear, masks nearest) and torch's bilinear upsampling.

Never imported by the runtime: ``diffvos.runtime`` must stay torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


def dense_reference():
    """``dense_step`` of diffvos/benchmarks/propagation.py: METHOD.md section 2 steps 1-6, literally."""
    from diffvos.benchmarks.propagation import dense_step

    return dense_step


@dataclass
class Settings:
    temperature: float = 0.2
    topk: int = 15
    radius: int = 15


class _Stack:
    """A list of per-frame arrays indexed like one array: ``stack[slots]`` concatenates (one copy)."""

    def __init__(self, items: list[np.ndarray]) -> None:
        self.items = items

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        return np.stack([self.items[int(i)] for i in slots])


class ListMemory:
    """The published memory: first frame + a Python list FIFO of the last N frames."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[np.ndarray] = []  # (h, w, C) unit vectors; index 0 = first frame
        self.values: list[np.ndarray] = []  # (h, w, K+1) soft masks
        self.features = _Stack(self.keys)
        self.masks = _Stack(self.values)

    @property
    def num_classes(self) -> int:
        return self.values[0].shape[-1]

    def context_slots(self) -> np.ndarray:
        return np.arange(len(self.keys))

    def push(self, key: np.ndarray, value: np.ndarray) -> None:
        if self.capacity == 0:
            return
        self.keys.append(key)
        self.values.append(value)
        if len(self.keys) > self.capacity + 1:
            del self.keys[1], self.values[1]


class DenseView:
    """What ``dense_step`` reads from a propagator: config, grid, channels and the memory."""

    def __init__(self, settings: Settings, h: int, w: int, channels: int, memory: ListMemory) -> None:
        self.config, self.h, self.w, self.channels, self.bank = settings, h, w, channels, memory


class BaselinePipeline:
    """First frame + mask -> ``start``; every later frame -> ``step`` (uint8 label map).

    ``model`` is an ADMUNet (eval, CPU). ``noise``: None draws fresh torch noise per frame (the
    published behaviour); an (E, 3, H, W) array is used as the noise of every frame.
    ``dense_chunk``: queries per dense affinity block (None = the whole (N*hw) x hw matrix at
    once, as published; a chunk bounds memory without changing the result).
    """

    def __init__(
        self,
        model: Any,
        size_hw: tuple[int, int],
        timestep: int = 30,
        layer: int = 6,
        ensemble: int = 8,
        memory: int = 28,
        temperature: float = 0.2,
        topk: int = 15,
        radius: int = 15,
        noise: np.ndarray | None = None,
        dense_chunk: int | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.size_hw = size_hw
        self.timestep, self.layer, self.ensemble = timestep, layer, ensemble
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        alpha_bar = float(torch.cumprod(1 - betas, 0)[timestep])
        self.signal, self.sigma = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        self.noise = None if noise is None else torch.from_numpy(np.asarray(noise, np.float32))
        self.generator = torch.Generator().manual_seed(seed)
        self.settings = Settings(temperature, topk, radius)
        self.memory_size = memory
        self.dense_chunk = dense_chunk
        self._dense = dense_reference()
        self._caught: list[Any] = []
        self._hook = model.output_blocks[layer].register_forward_hook(lambda m, i, o: self._caught.append(o))
        self.timings: dict[str, float] = {}
        self.stride = 0
        self.mem: ListMemory | None = None

    def close(self) -> None:
        self._hook.remove()

    # -- stages ------------------------------------------------------------------------------
    def preprocess(self, bgr: np.ndarray):
        from PIL import Image

        torch = self.torch
        h, w = self.size_hw
        img = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
        return (x - 0.5) / 0.5

    def features(self, x0) -> np.ndarray:
        """Fresh (or given) noise, full U-Net forward, hooked decoder output averaged over E."""
        torch = self.torch
        e = self.ensemble
        if self.noise is None:
            eps = torch.randn((e, *x0.shape), generator=self.generator)
        else:
            eps = self.noise
        x_t = self.signal * x0[None] + self.sigma * eps
        self._caught.clear()
        with torch.no_grad():
            self.model(x_t, torch.full((e,), self.timestep, dtype=torch.long))
        feats = self._caught.pop().mean(dim=0)
        self._caught.clear()
        return feats

    def _normalised_hwc(self, feats) -> np.ndarray:
        torch = self.torch
        return torch.nn.functional.normalize(feats, dim=0).permute(1, 2, 0).contiguous().numpy()

    def _labels(self, soft: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        """Bilinear upsampling to the model size, per-channel min-max, argmax, nearest to the frame."""
        from PIL import Image

        torch = self.torch
        up = torch.nn.functional.interpolate(torch.from_numpy(soft)[None], size=self.size_hw, mode="bilinear",
                                             align_corners=False)[0]
        flat = up.reshape(up.shape[0], -1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        for c in range(flat.shape[0]):
            if hi[c] > 0:
                span = hi[c] - lo[c]
                flat[c] = (flat[c] - lo[c]) / span if span > 0 else flat[c] - lo[c]
        labels = up.argmax(dim=0).to(torch.uint8).numpy()
        return np.asarray(Image.fromarray(labels).resize((out_hw[1], out_hw[0]), Image.NEAREST))

    # -- API ------------------------------------------------------------------------------------
    def start(self, bgr: np.ndarray, labels: np.ndarray) -> None:
        from PIL import Image

        feats = self.features(self.preprocess(bgr))
        c, h, w = feats.shape
        self.stride = self.size_hw[0] // h
        self.channels = c
        k1 = int(labels.max()) + 1
        small = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST))
        onehot = (small[:, :, None] == np.arange(k1)).astype(np.float32)
        self.mem = ListMemory(self.memory_size)
        self.mem.keys.append(self._normalised_hwc(feats))
        self.mem.values.append(onehot)
        self.view = DenseView(self.settings, h, w, c, self.mem)

    def prefill(self, n: int) -> None:
        """Fill the FIFO with ``n`` copies of the first frame (a step's cost depends on the
        number of context frames, not on their content)."""
        for _ in range(n):
            self.mem.push(self.mem.keys[0].copy(), self.mem.values[0].copy())

    def step(self, bgr: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        x0 = self.preprocess(bgr)
        t1 = time.perf_counter()
        feats = self.features(x0)
        t2 = time.perf_counter()
        soft = self._dense(self.view, feats.numpy(), chunk=self.dense_chunk)  # (K+1, h, w)
        self.mem.push(self._normalised_hwc(feats), np.ascontiguousarray(np.moveaxis(soft, 0, -1)))
        t3 = time.perf_counter()
        labels = self._labels(soft, bgr.shape[:2])
        t4 = time.perf_counter()
        self.timings = {"preprocess_ms": (t1 - t0) * 1e3, "features_ms": (t2 - t1) * 1e3,
                        "propagate_ms": (t3 - t2) * 1e3, "postprocess_ms": (t4 - t3) * 1e3,
                        "total_ms": (t4 - t0) * 1e3}
        return labels
