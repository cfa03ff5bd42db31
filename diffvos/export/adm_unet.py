"""The guided-diffusion (ADM) U-Net, written for this project.

Module and parameter names reproduce guided-diffusion's ``UNetModel`` state-dict layout
(``input_blocks.N.M...``, ``middle_block``, ``output_blocks``, ``out``), so its public checkpoints
load with ``strict=True``. The computation is split so that the time conditioning can be folded
into constants at export (see :class:`diffvos.export.adm.TruncatedADM`): a ResBlock's body takes
its FiLM vector (the ``emb_layers`` output) as an argument.

Attention is plain matmul + softmax (ONNX-friendly, no fused kernels), and no forward pass
branches on tensor values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffvos.bundle.sizes import check_size
from diffvos.errors import ExportError
from diffvos.export.adm_config import ADMConfig


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim]: cosines of t·f_k then sines, f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-5)


class Resample(nn.Module):
    """Parameter-free 2x resampling used inside up/down ResBlocks (nearest up, average-pool down)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("up", "down", "none"):
            raise ValueError(mode)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.mode == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x


class ConvDownsample(nn.Module):
    """Stride-2 3x3 convolution (the ``resblock_updown=False`` downsampler; parameter ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ConvUpsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (the ``resblock_updown=False`` upsampler)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resblock_body(block: nn.Module, x: torch.Tensor, film: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The ResBlock computation given its time conditioning.

    ``film`` is (1 + scale, shift) with scale-shift norm, else the additive bias; each broadcasts
    as [B or 1, C, 1, 1]. ``block`` is a :class:`ResBlock` or a folded copy with the same parts.
    """
    norm_in, act_in, conv_in = block.in_layers[0], block.in_layers[1], block.in_layers[2]
    h = block.resample(act_in(norm_in(x)))
    x = block.resample(x)
    h = conv_in(h)
    if block.scale_shift:
        scale1p, shift = film
        h = block.out_layers[0](h) * scale1p + shift
        for layer in list(block.out_layers)[1:]:
            h = layer(h)
    else:
        h = block.out_layers(h + film)
    return block.skip_connection(x) + h


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, conditioned on the time embedding, with optional 2x resampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        scale_shift: bool,
        dropout: float = 0.0,
        resample: str = "none",
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = Resample(resample)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(
            group_norm(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def film(self, emb: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Time conditioning for :func:`resblock_body`, from the embedding [B, emb_channels]."""
        v = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = v.chunk(2, dim=1)
            return 1 + scale, shift
        return v

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return resblock_body(self, x, self.film(emb))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    ``legacy_order`` (guided-diffusion's default) lays the qkv channels out head by head
    ([q_h, k_h, v_h] per head); otherwise all q, then all k, then all v.
    """

    def __init__(self, channels: int, num_heads: int, legacy_order: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    @property
    def head_dim(self) -> int:
        return self.channels // self.num_heads

    def heads_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head query, key and value projections of x [B,C,H,W], each [B*heads, head_dim, H*W]."""
        b, c, heads = x.shape[0], self.channels, self.num_heads  # static sizes: no traced arithmetic
        ch = c // heads
        qkv = self.qkv(self.norm(x.reshape(b, c, -1)))
        if self.legacy_order:
            q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
        else:
            q, k, v = (t.reshape(b * heads, ch, -1) for t in qkv.chunk(3, dim=1))
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], self.channels
        ch = self.head_dim
        flat = x.reshape(b, c, -1)
        q, k, v = self.heads_qkv(x)
        scale = 1.0 / math.sqrt(math.sqrt(ch))  # split between q and k for fp16 headroom, as upstream
        weight = torch.matmul((q * scale).transpose(1, 2), k * scale)  # [bh, T, T]
        weight = torch.softmax(weight, dim=-1)
        out = torch.matmul(v, weight.transpose(1, 2))  # [bh, ch, T]
        out = self.proj_out(out.reshape(b, c, -1))
        return (flat + out).reshape(x.shape)


class TimestepSequential(nn.Sequential):
    """A block of layers; ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def check_layer(layer: int, config: ADMConfig) -> int:
    n = config.num_output_blocks
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ExportError(f"ADM decoder layer must be an output-block index in 0..{n - 1}, got {layer!r}")
    return layer


class ADMUNet(nn.Module):
    """guided-diffusion ``UNetModel`` (unconditional), with the same state-dict names and shapes."""

    def __init__(self, config: ADMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or ADMConfig()
        mc = cfg.num_channels
        emb_ch = 4 * mc
        attn_at = cfg.attention_strides
        legacy = not cfg.use_new_attention_order

        def res(cin: int, cout: int, resample: str = "none") -> ResBlock:
            return ResBlock(cin, emb_ch, cout, cfg.use_scale_shift_norm, cfg.dropout, resample)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        blocks = [TimestepSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))]
        skip_channels = [mc]
        ch, ds = mc, 1
        last = len(cfg.channel_mult) - 1
        for level, cout in enumerate(cfg.level_channels):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, cout)]
                ch = cout
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, cfg.heads_for(ch), legacy))
                blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                down = res(ch, ch, "down") if cfg.resblock_updown else ConvDownsample(ch)
                blocks.append(TimestepSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)

        self.middle_block = TimestepSequential(
            res(ch, ch), AttentionBlock(ch, cfg.heads_for(ch), legacy), res(ch, ch)
        )

        blocks = []
        table: list[tuple[int, int]] = []  # (stride, channels) of each output block's result
        for level, cout in reversed(list(enumerate(cfg.level_channels))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), cout)]
                ch = cout
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, cfg.heads_for(ch, upsample=True), legacy))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up") if cfg.resblock_updown else ConvUpsample(ch))
                    ds //= 2
                blocks.append(TimestepSequential(*layers))
                table.append((ds, ch))
        self.output_blocks = nn.ModuleList(blocks)
        self.block_table = table

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    # facts ------------------------------------------------------------------------------------
    @property
    def total_stride(self) -> int:
        return self.config.total_stride

    def layer_table(self, height: int, width: int) -> list[dict[str, int]]:
        """Stride, channels and feature size of each output block for an input of height x width."""
        check_size(height, width, self.total_stride, "ADM")
        return [
            {"layer": i, "stride": s, "channels": c, "height": height // s, "width": width // s}
            for i, (s, c) in enumerate(self.block_table)
        ]

    # computation ------------------------------------------------------------------------------
    def time_embedding(self, timesteps: torch.Tensor | int, batch: int) -> torch.Tensor:
        """time_embed MLP output [batch, 4*num_channels] for integer time steps."""
        device = self.time_embed[0].weight.device
        t = torch.as_tensor(timesteps, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        return self.time_embed(timestep_embedding(t, self.config.num_channels))

    def _run(self, x: torch.Tensor, timesteps: torch.Tensor | int, last_block: int) -> torch.Tensor:
        if not torch.jit.is_tracing():
            check_size(int(x.shape[-2]), int(x.shape[-1]), self.total_stride, "ADM")
        emb = self.time_embedding(timesteps, x.shape[0])
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks[: last_block + 1]:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return h

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        """Noise prediction (and variance channels with learn_sigma), [B, out_channels, H, W]."""
        return self.out(self._run(x, timesteps, len(self.output_blocks) - 1))

    def decoder_features(self, x: torch.Tensor, timesteps: torch.Tensor | int, layer: int) -> torch.Tensor:
        """Output of output block ``layer``, running nothing after it."""
        return self._run(x, timesteps, check_layer(layer, self.config))
