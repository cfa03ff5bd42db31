"""FLOP counts with torch's FLOP counter (a multiply-add counts as 2).

Works on the meta device, so a full-size architecture is counted without its weights.
"""

from __future__ import annotations

from typing import Any


def count_flops(module: Any, *inputs: Any) -> int:
    """FLOPs of one ``module(*inputs)`` call (matmuls and convolutions; norms etc. are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return int(counter.get_total_flops())
