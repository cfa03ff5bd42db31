"""Diffusion noise schedules (numpy only: the runtime imports no torch)."""

from __future__ import annotations

import numpy as np


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) for β linear from beta_start to beta_end, t counted from 0 (float64).

    The DDPM/ADM training schedule; index t of the result is the ᾱ used for time step t.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)
