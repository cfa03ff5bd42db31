"""Deterministic DDIM inversion of x_0 to x_t, instead of random noise (README, "DDIM inversion").

With the bundle's noise-prediction graph eps_theta(x, t) and its training schedule ᾱ, S steps go
from the clean input (ᾱ = 1) to the bundle's time step t over the time steps
tau_k = round(k t / S), k = 0..S (tau_0 = 0). Step k (one graph call):

    eps   = eps_theta(x_{k-1}, tau_{k-1})
    x0^   = (x_{k-1} - sqrt(1 - a_{k-1}) eps) / sqrt(a_{k-1})      a_0 = 1, a_k = ᾱ[tau_k]
    x_k   = sqrt(a_k) x0^ + sqrt(1 - a_k) eps

the DDIM update (eta = 0) run backwards, as in DDIM inversion / null-text inversion. x_S has the
marginal scale of x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) eps, so it replaces the noised input
exactly, and the same frame always gives the same features. A v-prediction model's output v is
turned into eps = sqrt(ᾱ) v + sqrt(1 - ᾱ) x at the graph's time step.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from diffvos.bundle import DDIM
from diffvos.errors import BundleError, InputError
from diffvos.runtime.engine import Engine


def inversion_timesteps(target: int, steps: int) -> list[int]:
    """tau_0 = 0 < tau_1 < ... < tau_S = target, tau_k = round(k * target / S)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"inversion_steps must be an integer >= 1, got {steps!r}")
    if steps > target:
        raise InputError(f"inversion_steps={steps} exceeds the bundle's time step t={target}: at most one DDIM step "
                         f"per time step (use 1..{target})" if target else
                         "the bundle's time step is 0: there is nothing to invert")
    return [int(round(k * target / steps)) for k in range(steps + 1)]


class DDIMInverter:
    """x_0 -> x_t in S calls of the noise-prediction engine; ``calls`` and ``last_ms`` report the cost."""

    def __init__(self, engine: Engine, section: DDIM, target: int, steps: int) -> None:
        self.engine, self.section = engine, section
        self.alphas = np.asarray(section.alphas_cumprod, np.float64)
        if not 0 <= target < self.alphas.size:
            raise BundleError(f"the DDIM schedule has {self.alphas.size} steps; time step {target} is outside it")
        self.timesteps = inversion_timesteps(target, steps)
        self.calls = 0
        self.last_ms = 0.0
        self._t = np.zeros(1, np.float32)

    @property
    def steps(self) -> int:
        return len(self.timesteps) - 1

    def __call__(self, x0: np.ndarray, observe: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """x0 [Cin,H,W] (or [1,Cin,H,W]) -> x_t [1,Cin,H,W] float32. ``observe(k, x_k)`` sees every step."""
        t0 = time.perf_counter()
        x = np.array(x0, np.float32, copy=True).reshape(1, *x0.shape[-3:])
        a_prev = 1.0
        s = self.section
        for k in range(1, len(self.timesteps)):
            tau_prev, tau = self.timesteps[k - 1], self.timesteps[k]
            self._t[0] = tau_prev
            out = self.engine.infer({s.sample_input: x, s.timestep_input: self._t})[s.output]
            self.calls += 1
            if s.prediction == "v_prediction":
                a_model = float(self.alphas[tau_prev])
                eps = math.sqrt(a_model) * out + math.sqrt(1.0 - a_model) * x
            else:
                eps = out
            a = float(self.alphas[tau])
            x0_hat = (x - np.float32(math.sqrt(1.0 - a_prev)) * eps) / np.float32(math.sqrt(a_prev))
            x = (np.float32(math.sqrt(a)) * x0_hat + np.float32(math.sqrt(1.0 - a)) * eps).astype(np.float32)
            a_prev = a
            if observe is not None:
                observe(k, x)
        self.last_ms = (time.perf_counter() - t0) * 1e3
        return x
