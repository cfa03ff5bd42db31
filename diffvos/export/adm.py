"""ADM backbone: load a guided-diffusion checkpoint and cut the U-Net at a decoder layer.

:class:`TruncatedADM` is the graph exported to ONNX: x_t [E,3,H,W] -> mean over E of output
block L, [1,C,H/s,W/s]. The time step is fixed, so the sinusoidal embedding, the time MLP and
every ResBlock's ``emb_layers`` projection are evaluated once and stored as constant buffers;
the module holds no parameter that output block L does not need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffvos.bundle.sizes import check_size
from diffvos.errors import CheckpointError, ExportError
from diffvos.export.adm_config import ADMConfig
from diffvos.export.adm_unet import (
    ADMUNet,
    ResBlock,
    TimestepSequential,
    check_layer,
    resblock_body,
    timestep_embedding,
)

__all__ = ["ADMConfig", "ADMUNet", "TruncatedADM", "load_adm", "timestep_embedding"]

_LIST_LIMIT = 10


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"not a state dict (got {type(obj).__name__})", path)
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"not a state dict: {len(bad)} entries are not named tensors, e.g. {bad[0]!r}", path)
    return obj


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    more = f", ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return f"{len(names)}: {shown}{more}"


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = ["checkpoint does not match the ADM model config"]
        if missing:
            parts.append(f"missing tensors {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_describe(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_describe(shapes)}")
        raise CheckpointError("; ".join(parts), path)


def load_adm(checkpoint_path: str | Path, config: ADMConfig | None = None) -> ADMUNet:
    """Build an :class:`ADMUNet` (float32, CPU, eval mode) and load a guided-diffusion checkpoint.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``. The model is built
    on the meta device and the checkpoint's tensors are assigned, so memory holds one copy.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", path) from None
    state = _extract_state_dict(obj, path)
    with torch.device("meta"):
        model = ADMUNet(config or ADMConfig())
    check_state_dict(model, state, path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class FoldedResBlock(nn.Module):
    """A ResBlock whose time conditioning is a stored constant (no ``emb_layers``)."""

    def __init__(self, block: ResBlock, emb: torch.Tensor) -> None:
        super().__init__()
        self.scale_shift = block.scale_shift
        self.in_layers = block.in_layers
        self.resample = block.resample
        self.out_layers = block.out_layers
        self.skip_connection = block.skip_connection
        film = block.film(emb)
        if self.scale_shift:
            self.register_buffer("film_scale", film[0].detach().clone())
            self.register_buffer("film_shift", film[1].detach().clone())
        else:
            self.register_buffer("film_bias", film.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        film = (self.film_scale, self.film_shift) if self.scale_shift else self.film_bias
        return resblock_body(self, x, film)


def _fold(block: TimestepSequential, emb: torch.Tensor) -> nn.Sequential:
    return nn.Sequential(*[FoldedResBlock(m, emb) if isinstance(m, ResBlock) else m for m in block])


class TruncatedADM(nn.Module):
    """Encoder + middle + output blocks 0..L at a fixed time step; returns the ensemble mean.

    Submodules share the parameters of ``model`` (no copy). Inputs must have height and width
    that are multiples of ``total_stride``.
    """

    def __init__(self, model: ADMUNet, timestep: int, layer: int) -> None:
        super().__init__()
        cfg = model.config
        self.layer = check_layer(layer, cfg)
        if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0:
            raise ExportError(f"ADM time step must be a non-negative integer, got {timestep!r}")
        self.timestep = timestep
        self.total_stride = model.total_stride
        self.block_table = model.block_table[: layer + 1]
        with torch.no_grad():
            emb = model.time_embedding(timestep, 1)  # [1, 4*num_channels]
            self.input_blocks = nn.ModuleList(_fold(b, emb) for b in model.input_blocks)
            self.middle_block = _fold(model.middle_block, emb)
            self.output_blocks = nn.ModuleList(_fold(b, emb) for b in model.output_blocks[: layer + 1])

    @property
    def stride(self) -> int:
        return self.block_table[-1][0]

    @property
    def channels(self) -> int:
        return self.block_table[-1][1]

    def check_size(self, height: int, width: int) -> None:
        check_size(height, width, self.total_stride, "ADM")

    def hidden(self, x_t: torch.Tensor, last_parts: int | None = None) -> torch.Tensor:
        """Per-draw output [E,C,h,w] of output block L, or of its first ``last_parts`` layers only."""
        if not torch.jit.is_tracing():  # traced sizes are tensors: exporters call check_size() first
            self.check_size(int(x_t.shape[-2]), int(x_t.shape[-1]))
        skips = []
        h = x_t
        for block in self.input_blocks:
            h = block(h)
            skips.append(h)
        h = self.middle_block(h)
        for i, block in enumerate(self.output_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            last = i == len(self.output_blocks) - 1 and last_parts is not None
            h = block[:last_parts](h) if last else block(h)
        return h

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.hidden(x_t).mean(dim=0, keepdim=True)


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (shared tensors counted once)."""
    seen = {id(p): p.numel() for p in module.parameters()}
    return sum(seen.values())
