"""How a graph's output is compared with a reference (export verification, FP16 and INT8 reports)."""

from __future__ import annotations

import numpy as np

from diffvos.bundle.manifest import Comparison


def compare(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Max abs error, error relative to the reference's largest magnitude, and cosine similarity."""
    ref = np.asarray(reference, np.float64).ravel()
    cand = np.asarray(candidate, np.float64).ravel()
    max_abs = float(np.max(np.abs(ref - cand))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float(ref @ cand / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    return Comparison(max_abs_error=max_abs, max_rel_error=max_abs / (scale or 1.0), cosine=cosine)
