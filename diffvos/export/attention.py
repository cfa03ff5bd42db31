"""Self-attention query/key graphs: the U-Net's own attention kernel as the propagation affinity.

Attention layers are numbered like decoder layers: attention layer L is the self-attention that
follows decoder layer L in its block (ADM: the AttentionBlock of output block L, present at
strides 8/16/32; Stable Diffusion: ``attn1`` of the first transformer block of the attention
that follows up-resnet L, present in the cross-attention up blocks). The exported graph maps
x_t [E,Cin,H,W] to the mean over E of that layer's per-head query and key projections,
[1, 2*heads*head_dim, h, w]: queries head-major (channel = head*head_dim + i), then keys in the
same order. Nothing after the projections is kept. The runtime's
:mod:`diffvos.runtime.attention` reads this layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffvos.errors import ExportError
from diffvos.export.adm import TruncatedADM
from diffvos.export.adm_unet import ADMUNet, AttentionBlock
from diffvos.export.sd import TruncatedSDUNet, sd_layer_table

# --------------------------------------------------------------------------------------------- tables


def adm_attention_table(model: ADMUNet, height: int, width: int) -> list[dict[str, Any]]:
    """One row per output block holding an AttentionBlock: its layer (= output block), module name,
    stride, channels, heads, head_dim and grid size for an input of height x width."""
    blocks = model.layer_table(height, width)
    rows = []
    for layer, block in enumerate(model.output_blocks):
        for part, module in enumerate(block):
            if isinstance(module, AttentionBlock):
                stride = blocks[layer - 1]["stride"] if layer else model.total_stride  # before any upsampler
                rows.append({"layer": layer, "module": f"output_blocks.{layer}.{part}", "stride": stride,
                             "channels": module.channels, "heads": module.num_heads, "head_dim": module.head_dim,
                             "height": height // stride, "width": width // stride})
    return rows


def sd_attention_table(unet: Any, latent_h: int, latent_w: int, vae_factor: int = 8) -> list[dict[str, Any]]:
    """One row per decoder layer followed by a transformer (attn1 of its first transformer block)."""
    rows = []
    for row in sd_layer_table(unet, latent_h, latent_w, vae_factor=vae_factor):
        attentions = getattr(unet.up_blocks[row["block"]], "attentions", None) or []
        if row["resnet"] < len(attentions):
            attn = attentions[row["resnet"]].transformer_blocks[0].attn1
            rows.append({**row, "module": f"up_blocks.{row['block']}.attentions.{row['resnet']}.transformer_blocks.0.attn1",
                         "heads": int(attn.heads), "head_dim": int(attn.inner_dim // attn.heads)})
    return rows


def attention_row(table: list[dict[str, Any]], layer: int, what: str) -> dict[str, Any]:
    """The row of attention layer ``layer``; an error lists the valid ones with their geometry."""
    for row in table:
        if row["layer"] == layer:
            return row
    valid = "; ".join(f"{r['layer']}: stride {r['stride']}, {r['heads']} heads x {r['head_dim']}" for r in table)
    raise ExportError(f"{what} decoder layer {layer!r} has no self-attention (layers with one: {valid or 'none'})")


def _heads_to_map(x: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """[B*heads, d, h*w] -> [B, heads*d, h, w] (head-major channels)."""
    return x.reshape(batch, -1, height, width)


# --------------------------------------------------------------------------------------------- ADM


class TruncatedADMAttention(nn.Module):
    """x_t [E,3,H,W] -> mean over E of [queries; keys] of the AttentionBlock in output block L."""

    def __init__(self, model: ADMUNet, timestep: int, layer: int) -> None:
        super().__init__()
        self.trunc = TruncatedADM(model, timestep, layer)
        block = self.trunc.output_blocks[-1]
        parts = [i for i, m in enumerate(block) if isinstance(m, AttentionBlock)]
        if not parts:
            raise ExportError(f"ADM output block {layer} has no attention block")
        self.part = parts[0]
        self.attention: AttentionBlock = block[self.part]
        self.heads, self.head_dim = self.attention.num_heads, self.attention.head_dim

    @property
    def channels(self) -> int:
        return 2 * self.heads * self.head_dim

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        h = self.trunc.hidden(x_t, last_parts=self.part)
        b, _, hh, ww = h.shape
        q, k, _ = self.attention.heads_qkv(h)
        qk = torch.cat([_heads_to_map(q, b, hh, ww), _heads_to_map(k, b, hh, ww)], dim=1)
        return qk.mean(dim=0, keepdim=True)


# --------------------------------------------------------------------------------------------- SD


class _Captured(Exception):
    """Carries attn1's projections out of the transformer: nothing after them is computed."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor) -> None:
        super().__init__("captured")
        self.query, self.key = query, key


class _CaptureQueryKey:
    """A diffusers attention processor that computes the query and key projections and stops."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hidden_states.dim() != 3:
            raise ExportError("attn1 received a non-sequence input; unsupported transformer layout")
        raise _Captured(attn.to_q(hidden_states), attn.to_k(hidden_states))


class TruncatedSDAttention(nn.Module):
    """x_t [E,4,h,w] -> mean over E of [queries; keys] of attn1 after up-resnet L (fixed t, prompt)."""

    def __init__(self, unet: nn.Module, timestep: int, layer: int, prompt_embeds: torch.Tensor,
                 vae_factor: int = 8) -> None:
        super().__init__()
        row = attention_row(sd_attention_table(unet, 64, 64, vae_factor), layer, "SD")
        self.trunc = TruncatedSDUNet(unet, timestep, layer, prompt_embeds, vae_factor)
        self.transformer = unet.up_blocks[row["block"]].attentions[row["resnet"]]
        self.attn1 = self.transformer.transformer_blocks[0].attn1
        if getattr(self.attn1, "norm_q", None) is not None or getattr(self.attn1, "norm_k", None) is not None:
            raise ExportError("attn1 with query/key normalisation is not supported")
        self.heads, self.head_dim = row["heads"], row["head_dim"]
        self.stride = row["stride"]

    @property
    def channels(self) -> int:
        return 2 * self.heads * self.head_dim

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        h = self.trunc.hidden(x_t)
        b, _, hh, ww = h.shape
        ctx = self.trunc.context.expand(b, -1, -1)
        saved = self.attn1.processor
        self.attn1.processor = _CaptureQueryKey()
        try:
            self.transformer(h, encoder_hidden_states=ctx, return_dict=False)
        except _Captured as got:
            q, k = got.query, got.key  # [B, h*w, heads*d]
        else:
            raise ExportError("attn1 was not reached")
        finally:
            self.attn1.processor = saved
        maps = [t.reshape(b, hh * ww, self.heads * self.head_dim).transpose(1, 2).reshape(b, -1, hh, ww)
                for t in (q, k)]
        return torch.cat(maps, dim=1).mean(dim=0, keepdim=True)
