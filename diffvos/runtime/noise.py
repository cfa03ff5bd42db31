"""Noise injection x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε for the E ensemble draws (METHOD.md 1.2).

By default the E noise draws are generated once per session from a seed and reused for every
frame: output is deterministic and the per-frame RNG cost disappears. ``fresh=True`` draws new
noise for every frame, as the paper does.
"""

from __future__ import annotations

import math

import numpy as np


class NoiseInjector:
    def __init__(self, alpha_bar: float, ensemble: int, shape: tuple[int, ...], seed: int = 0, fresh: bool = False):
        if not 0.0 < alpha_bar <= 1.0:
            raise ValueError(f"alpha_bar must be in (0, 1], got {alpha_bar}")
        self.signal = np.float32(math.sqrt(alpha_bar))
        self.sigma = np.float32(math.sqrt(1.0 - alpha_bar))
        self.shape = (ensemble, *shape)
        self.fresh = fresh
        self._rng = np.random.default_rng(seed)
        self._bank = self._draw() if self.sigma > 0 else None
        self._out = np.empty(self.shape, np.float32)

    def _draw(self) -> np.ndarray:
        return self._rng.standard_normal(self.shape, dtype=np.float32)

    @property
    def draws(self) -> np.ndarray | None:
        """The fixed draws [E, C, H, W] reused for every frame (None: ᾱ = 1, no noise)."""
        return self._bank

    @property
    def nbytes(self) -> int:
        return self._out.nbytes + (self._bank.nbytes if self._bank is not None else 0)

    def __call__(self, x0: np.ndarray) -> np.ndarray:
        """x0 [C,H,W] (or [1,C,H,W]) -> x_t [E,C,H,W]; the returned buffer is reused next call."""
        x0 = x0.reshape(self.shape[1:])
        if self._bank is None:  # ᾱ = 1: no noise (non-diffusion backbones)
            self._out[:] = x0
            return self._out
        eps = self._draw() if self.fresh else self._bank
        np.multiply(eps, self.sigma, out=self._out)
        self._out += self.signal * x0
        return self._out
