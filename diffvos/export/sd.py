"""Stable Diffusion graphs for export: the VAE encoder and the U-Net cut at a decoder layer.

:class:`TruncatedSDUNet` maps x_t [E,4,h,w] (latents, already noised) to the mean over E of
up-block resnet L's output, [1,C,h',w']. Layer L counts every resnet of every up block in order
from 0; its output is the resnet's return value (what a forward hook on it sees), taken before
the attention and upsampler that follow it in its block. The time step and the prompt are
fixed, so the time embedding (sinusoid + MLP) and every resnet's ``time_emb_proj`` output are
computed once and stored as buffers, and the empty-prompt embedding is a buffer too: the graph
holds neither the time MLP nor the text encoder. Nothing after resnet L is kept.

:class:`VAEEncoderGraph` maps an image [1,3,H,W] in [-1,1] to the scaled latent.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffvos.errors import ExportError
from diffvos.export.sd_load import (
    SDComponents,
    alpha_bar,
    alphas_cumprod,
    check_sd_layer,
    empty_prompt_embedding,
    load_sd,
    sd_layer_table,
    vae_scale_factor,
)

__all__ = [
    "FoldedResnet",
    "SDComponents",
    "TruncatedSDUNet",
    "VAEEncoderGraph",
    "alpha_bar",
    "alphas_cumprod",
    "check_sd_layer",
    "empty_prompt_embedding",
    "load_sd",
    "sd_layer_table",
    "vae_scale_factor",
]

_DOWN = {"CrossAttnDownBlock2D", "DownBlock2D"}
_MID = {"UNetMidBlock2DCrossAttn"}
_UP = {"CrossAttnUpBlock2D", "UpBlock2D"}


class FoldedResnet(nn.Module):
    """A diffusers ResnetBlock2D whose time conditioning is a stored constant.

    Same arithmetic as ResnetBlock2D.forward with ``temb`` fixed: the projected embedding
    [1,C,1,1] (or its scale/shift halves) is a buffer, ``time_emb_proj`` is not kept.
    """

    def __init__(self, resnet: nn.Module, emb: torch.Tensor) -> None:
        super().__init__()
        self.mode = resnet.time_embedding_norm
        if self.mode not in ("default", "scale_shift"):
            raise ExportError(f"unsupported resnet time_embedding_norm {self.mode!r} (default, scale_shift)")
        for name in ("norm1", "conv1", "norm2", "dropout", "conv2", "conv_shortcut", "nonlinearity",
                     "upsample", "downsample"):
            setattr(self, name, getattr(resnet, name))
        self.output_scale_factor = float(resnet.output_scale_factor)
        temb = None
        if resnet.time_emb_proj is not None:
            t = emb if resnet.skip_time_act else resnet.nonlinearity(emb)
            temb = resnet.time_emb_proj(t)[:, :, None, None].detach().clone()
        if self.mode == "scale_shift":
            if temb is None:
                raise ExportError("a scale_shift resnet without time_emb_proj cannot be folded")
            scale, shift = torch.chunk(temb, 2, dim=1)
            self.register_buffer("time_scale", (1 + scale).contiguous())
            self.register_buffer("time_shift", shift.contiguous())
        elif temb is not None:
            self.register_buffer("time_bias", temb)
        self.has_temb = temb is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        h = self.nonlinearity(self.norm1(x))
        if self.upsample is not None:
            skip, h = self.upsample(skip), self.upsample(h)
        elif self.downsample is not None:
            skip, h = self.downsample(skip), self.downsample(h)
        h = self.conv1(h)
        if self.mode == "scale_shift":
            h = self.norm2(h) * self.time_scale + self.time_shift
        else:
            if self.has_temb:
                h = h + self.time_bias
            h = self.norm2(h)
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        if self.conv_shortcut is not None:
            skip = self.conv_shortcut(skip)
        return (skip + h) / self.output_scale_factor


class _Stage(nn.Module):
    """Resnets, optional attentions and an optional resampler: one (possibly cut) U-Net block."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, resampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions or [])
        self.resampler = resampler


def _attend(attn: nn.Module, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return attn(h, encoder_hidden_states=context, return_dict=False)[0]


def _upsample(up: nn.Module, h: torch.Tensor, size: Any) -> torch.Tensor:
    """diffusers Upsample2D with the output size always forwarded (equal to 2x on even sizes)."""
    return up.conv(F.interpolate(h, size=size, mode="nearest"))


def _check_unet(unet: nn.Module) -> None:
    cfg = unet.config
    problems = []
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "time_embed_act"):
        if cfg.get(key) is not None:
            problems.append(f"{key}={cfg.get(key)!r}")
    if cfg.get("center_input_sample"):
        problems.append("center_input_sample=True")
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        name = type(block).__name__
        if name not in _DOWN | _MID | _UP:
            problems.append(f"block type {name}")
        if getattr(block, "s1", None):
            problems.append(f"FreeU enabled on {name}")
    for up in unet.up_blocks:
        for u in up.upsamplers or []:
            if u.norm is not None or u.use_conv_transpose or not u.interpolate or not u.use_conv or u.name != "conv":
                problems.append("an up-sampler that is not nearest-2x + conv")
    if problems:
        raise ExportError("U-Net not supported by the SD exporter: " + ", ".join(sorted(set(problems))))


class TruncatedSDUNet(nn.Module):
    """conv_in, down blocks, mid block and up blocks up to resnet ``layer``, at a fixed t and prompt.

    Submodules share the U-Net's parameters (no copy). forward(x_t [E,4,h,w]) returns the mean
    over E of up-resnet ``layer``'s output, [1, C, ceil(h/k), ceil(w/k)], k = stride / VAE factor.
    ``prompt_embeds`` is [1, tokens, cross_attention_dim] (the empty prompt's embedding);
    ``vae_factor`` (pixels per latent cell) only scales the strides reported in errors and ``stride``.
    """

    def __init__(self, unet: nn.Module, timestep: int, layer: int, prompt_embeds: torch.Tensor,
                 vae_factor: int = 8) -> None:
        super().__init__()
        _check_unet(unet)
        table = sd_layer_table(unet, 64, 64, vae_factor=vae_factor)
        self.layer = check_sd_layer(layer, table)
        if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0:
            raise ExportError(f"SD time step must be a non-negative integer, got {timestep!r}")
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != 1:
            raise ExportError(f"prompt embedding must be [1, tokens, dim], got {tuple(prompt_embeds.shape)}")
        self.timestep = timestep
        self.channels = table[layer]["channels"]
        self.stride = table[layer]["stride"]  # pixels per feature cell
        self.unet_stride = self.stride // vae_factor  # latent cells per feature cell
        block, last = table[layer]["block"], table[layer]["resnet"]
        param = next(unet.parameters())
        with torch.no_grad():
            sample = torch.zeros(1, 1, 1, 1, dtype=param.dtype, device=param.device)
            emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
            fold = lambda rs: [FoldedResnet(r, emb) for r in rs]  # noqa: E731
            self.register_buffer("context", prompt_embeds.detach().to(param).clone())
            self.conv_in = unet.conv_in
            self.down = nn.ModuleList(
                _Stage(fold(b.resnets), list(getattr(b, "attentions", None) or []),
                       b.downsamplers[0] if b.downsamplers is not None else None)
                for b in unet.down_blocks)
            m = unet.mid_block
            self.mid = _Stage(fold(m.resnets), list(getattr(m, "attentions", None) or []), None)
            up = []
            for i, b in enumerate(unet.up_blocks[: block + 1]):
                n = last + 1 if i == block else len(b.resnets)
                attn = list(getattr(b, "attentions", None) or [])
                keep_attn = attn[: n - 1] if i == block else attn
                sampler = b.upsamplers[0] if (i < block and b.upsamplers is not None) else None
                up.append(_Stage(fold(b.resnets[:n]), keep_attn, sampler))
            self.up = nn.ModuleList(up)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        return self.hidden(x_t).mean(dim=0, keepdim=True)

    def hidden(self, x_t: torch.Tensor) -> torch.Tensor:
        """Per-draw output [E,C,h',w'] of up-resnet L."""
        ctx = self.context.expand(x_t.shape[0], -1, -1)
        h = self.conv_in(x_t)
        skips = [h]
        for stage in self.down:
            for k, resnet in enumerate(stage.resnets):
                h = resnet(h)
                if len(stage.attentions):
                    h = _attend(stage.attentions[k], h, ctx)
                skips.append(h)
            if stage.resampler is not None:
                h = stage.resampler(h)
                skips.append(h)
        h = self.mid.resnets[0](h)
        for attn, resnet in zip(self.mid.attentions, self.mid.resnets[1:]):
            h = resnet(_attend(attn, h, ctx))
        for stage in self.up:
            for k, resnet in enumerate(stage.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1))
                if k < len(stage.attentions):
                    h = _attend(stage.attentions[k], h, ctx)
            if stage.resampler is not None:
                h = _upsample(stage.resampler, h, skips[-1].shape[-2:])
        return h


class VAEEncoderGraph(nn.Module):
    """Image [1,3,H,W] in [-1,1] -> (posterior mean - shift_factor) * scaling_factor [1,4,H/f,W/f].

    With ``posterior="sample"`` it returns (that latent, std * scaling_factor): the runtime draws
    latent + std * ε itself, since a graph with a random node could not be verified.
    """

    def __init__(self, vae: nn.Module, posterior: str = "mean") -> None:
        super().__init__()
        if posterior not in ("mean", "sample"):
            raise ExportError(f"posterior must be 'mean' or 'sample', got {posterior!r}")
        self.posterior = posterior
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)
        self.factor = vae_scale_factor(vae.config)

    def check_size(self, height: int, width: int) -> None:
        """The latent is exactly H/f x W/f only when both are multiples of the VAE factor f."""
        if height % self.factor or width % self.factor:
            raise ExportError(f"SD input size {height}x{width} must be a multiple of the VAE factor {self.factor}")

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing():  # traced sizes are tensors: exporters call check_size() first
            self.check_size(int(image.shape[-2]), int(image.shape[-1]))
        moments = self.encoder(image)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        latent = (mean - self.shift_factor) * self.scaling_factor if self.shift_factor else mean * self.scaling_factor
        if self.posterior == "mean":
            return latent
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        return latent, std * self.scaling_factor
