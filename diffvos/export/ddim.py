"""The noise-prediction graph for deterministic DDIM inversion (the runtime's :mod:`diffvos.runtime.ddim`).

One graph serves every step: x_t [1,Cin,H,W] and the time step (float32 [1]) are inputs, the
output is the model's noise prediction eps [1,Cin,H,W]. Taking t as an input (rather than one
graph per step with t folded) keeps one copy of the weights, lets the number of steps S be
chosen at run time, and costs only the time-embedding MLP per call (a few small matmuls
against a full U-Net forward). A v-prediction model's output is converted to eps by the runtime,
which knows ᾱ_t (``DDIM.prediction``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffvos.export.adm_unet import ADMUNet

NOISE_INPUTS = ("x_t", "timestep")
NOISE_OUTPUT = "eps"


class ADMNoisePrediction(nn.Module):
    """guided-diffusion's eps_theta(x_t, t): the full U-Net, the first Cin output channels (the
    rest are the learned variance with ``learn_sigma``)."""

    def __init__(self, model: ADMUNet) -> None:
        super().__init__()
        self.model = model
        self.in_channels = model.config.in_channels

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, timestep)[:, : self.in_channels]


class SDNoisePrediction(nn.Module):
    """The diffusers U-Net's output for the folded prompt embedding (eps or v, per its config)."""

    def __init__(self, unet: nn.Module, prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("context", prompt_embeds.detach().clone())

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        ctx = self.context.expand(x_t.shape[0], -1, -1)
        return self.unet(x_t, timestep, encoder_hidden_states=ctx, return_dict=False)[0]


def example_inputs(x_t: torch.Tensor, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of an ensemble example and its time step, as the graph takes them."""
    return x_t[:1].contiguous(), torch.tensor([float(timestep)], dtype=torch.float32)


def noise_dynamic_axes(dynamic: bool) -> dict[str, dict[int, str]] | None:
    if not dynamic:
        return None
    return {"x_t": {2: "height", 3: "width"}, NOISE_OUTPUT: {2: "height", 3: "width"}}


def prediction_type(scheduler_config: dict[str, Any]) -> str:
    """'epsilon' or 'v_prediction' from a diffusers scheduler config (others are refused)."""
    from diffvos.errors import ExportError

    kind = scheduler_config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ExportError(f"DDIM inversion supports eps- and v-prediction models, not prediction_type={kind!r}")
    return kind
