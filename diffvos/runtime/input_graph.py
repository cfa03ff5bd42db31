"""The feature graph's input made on the device (METHOD.md 1.1-1.2): uint8 frame -> x_0 -> x_t.

On the device step only the uint8 frame goes up: the host resizes it to the model input size (as
uint8, the one resampling :func:`diffvos.runtime.preprocess.to_model_input` does, so both paths
see the same pixels), and this graph does the rest of the preprocessing (channel order, scale,
offset, mean/std) and the noise injection x_t = sqrt(ᾱ)·x_0 + sqrt(1-ᾱ)·ε with the session's
fixed noise draws, uploaded once. The operations are the numpy path's, in the same order and
precision, so both give the same x_t. A Stable Diffusion bundle splits it in two: frame -> x_0
before the VAE encoder, latent -> x_t after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffvos.bundle import Preprocess
from diffvos.runtime.onnx_build import GraphBuilder


@dataclass(frozen=True)
class InputSpec:
    """One input graph: ``source`` "frame" (uint8 (H, W, 3), ``flip`` reverses the channel order)
    or "latent" (float32 (1, C, H, W)); ``ensemble`` > 0 adds the noise stage and outputs x_t
    (E, C, H, W), 0 outputs x_0 (1, C, H, W)."""

    source: str
    height: int
    width: int
    channels: int = 3
    # the bundle's normalisation (diffvos.runtime.preprocess): x * scale + offset, then (x - mean) / std
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flip: bool = False
    scale: float = 1.0
    offset: float = 0.0
    # the noise stage: E draws, sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) noise
    ensemble: int = 0
    alpha_bar: float = 1.0

    @classmethod
    def frame(cls, size_hw: tuple[int, int], p: Preprocess, color: str, ensemble: int = 0,
              alpha_bar: float = 1.0) -> InputSpec:
        mean = tuple(float(v) for v in p.mean) if p.mean is not None and p.std is not None else None
        std = tuple(float(v) for v in p.std) if mean is not None else None
        return cls("frame", size_hw[0], size_hw[1], 3, mean=mean, std=std, flip=p.color != color,
                   scale=float(p.scale), offset=float(p.offset), ensemble=ensemble, alpha_bar=alpha_bar)

    def __post_init__(self) -> None:
        if self.source not in ("frame", "latent") or (self.source == "latent" and self.ensemble < 1):
            raise ValueError(f"input graph: bad spec {self}")

    @property
    def noisy(self) -> bool:
        """x_t differs from x_0 (ᾱ < 1, tested as NoiseInjector does), so the graph takes the noise draws."""
        return self.ensemble > 0 and np.float32(math.sqrt(1.0 - self.alpha_bar)) > 0


def input_model(spec: InputSpec) -> Any:
    """The graph: inputs ``frame`` or ``x0``, and ``noise`` (E, C, H, W) when :attr:`InputSpec.noisy`;
    output ``x_t`` (E, C, H, W) with the noise stage, ``x0`` (1, C, H, W) without."""
    g = GraphBuilder()
    h, w, c = spec.height, spec.width, spec.channels
    if spec.source == "frame":
        g.input("frame", np.uint8, [h, w, 3])
        x = g.cast("frame", np.float32)
        if spec.flip:
            x = g.op("Gather", [x, g.i64([2, 1, 0])], axis=2)
        x = g.op("Mul", [g.op("Transpose", [x], perm=[2, 0, 1]), g.f32(spec.scale)])
        x = g.op("Add", [x, g.f32(spec.offset)])
        if spec.mean is not None and spec.std is not None:
            x = g.op("Sub", [x, g.f32(np.asarray(spec.mean).reshape(3, 1, 1))])
            x = g.op("Div", [x, g.f32(np.asarray(spec.std).reshape(3, 1, 1))])
        x0 = g.op("Unsqueeze", [x, g.i64([0])])
    else:
        x0 = g.input("x0", np.float32, [1, c, h, w])
    if spec.ensemble == 0:  # frame -> x_0, before a VAE encoder
        g.op("Identity", [x0], outputs=["x0"])
        g.output("x0", np.float32, [1, c, h, w])
        return g.model("diffvos_input")
    if spec.noisy:  # as NoiseInjector: eps * sqrt(1 - ᾱ), plus sqrt(ᾱ) * x_0, in float32
        g.input("noise", np.float32, [spec.ensemble, c, h, w])
        signal, sigma = np.float32(math.sqrt(spec.alpha_bar)), np.float32(math.sqrt(1.0 - spec.alpha_bar))
        g.op("Add", [g.op("Mul", ["noise", g.f32(sigma)]), g.op("Mul", [x0, g.f32(signal)])], outputs=["x_t"])
    else:  # ᾱ = 1 (not a diffusion model): every draw is x_0
        g.op("Expand", [x0, g.i64([spec.ensemble, c, h, w])], outputs=["x_t"])
    g.output("x_t", np.float32, [spec.ensemble, c, h, w])
    return g.model("diffvos_input")
