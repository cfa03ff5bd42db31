"""Prompt learning for Stable Diffusion bundles (torch side; README, "Prompt learning").

The published step (Delatolas et al., section on prompt learning): one text token is optimised on
the first frame so that its cross-attention map matches the first mask; the learned prompt then
conditions the U-Net on every frame. Here:

* prompt: ``<start> <learned> <end> <pad> ...`` padded to the tokenizer's length; the learned
  token's input embedding (initialised to the mean of the vocabulary's embeddings) is the only
  trainable tensor; the text encoder turns the prompt into the context, as for any prompt;
* map: the U-Net runs once per step at the bundle's time step on the first frame's VAE latent,
  noised with a fixed draw; every cross-attention (``attn2``) of the up blocks records the
  softmax attention of each image position to the learned token, averaged over heads; the maps
  are resized bilinearly to the largest one and averaged over layers (A, values in [0, 1]);
* loss: mean squared error between the min-max normalised map (A - min A) / (max A - min A)
  and the mask area-averaged to A's grid (the map's shape is learned, not its level: the
  other tokens, <start> above all, keep most of the attention in a trained model);
* Adam on the embedding; the learned context ([1, tokens, dim]) is then folded into the bundle
  exactly as the empty prompt would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from diffvos.errors import ExportError


@dataclass
class PromptLearning:
    """What a run learned and how it went."""

    context: torch.Tensor  # [1, tokens, dim], the text encoder's output for the learned prompt
    token_embedding: torch.Tensor  # [dim_in], the learned input embedding
    losses: list[float] = field(default_factory=list)
    map_before: np.ndarray | None = None  # min-max normalised A on the mask grid, before and after
    map_after: np.ndarray | None = None
    target: np.ndarray | None = None
    layers: list[str] = field(default_factory=list)

    def agreement(self, which: str = "after") -> float:
        """IoU of (map > 0.5) with (mask > 0.5): how far the token's attention covers the mask."""
        a = (self.map_after if which == "after" else self.map_before) > 0.5
        m = self.target > 0.5
        union = np.count_nonzero(a | m)
        return 1.0 if union == 0 else np.count_nonzero(a & m) / union

    def report(self) -> dict[str, Any]:
        return {"steps": len(self.losses), "loss_first": self.losses[0] if self.losses else None,
                "loss_last": self.losses[-1] if self.losses else None,
                "map_mask_iou_before": self.agreement("before"), "map_mask_iou_after": self.agreement("after"),
                "layers": self.layers, "losses": self.losses}


class _TokenAttention:
    """A diffusers attention processor: the usual attention (diffusers' own score function), and
    the probability of every image position attending to one token, mean over heads."""

    def __init__(self, token: int) -> None:
        self.token = token
        self.size: tuple[int, int] | None = None
        self.map: torch.Tensor | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if hidden_states.dim() != 3 or encoder_hidden_states is None:
            raise ExportError("prompt learning expects cross-attention over a sequence of image positions")
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # [batch*heads, positions, tokens]
        self.map = probs[:, :, self.token].reshape(batch, -1, probs.shape[1]).mean(dim=1)  # [batch, positions]
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _token_maps(unet: Any, token: int) -> tuple[list[tuple[str, _TokenAttention]], list[Any]]:
    """Install a recording processor on every up-block attn2; hooks note each map's grid size."""
    recorders, handles = [], []
    for b, block in enumerate(unet.up_blocks):
        for a, transformer in enumerate(getattr(block, "attentions", None) or []):
            for t, tb in enumerate(transformer.transformer_blocks):
                if getattr(tb, "attn2", None) is None:
                    continue
                rec = _TokenAttention(token)
                name = f"up_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2"
                recorders.append((name, rec, tb.attn2, tb.attn2.processor))
                tb.attn2.processor = rec
                handles.append(transformer.register_forward_pre_hook(
                    lambda mod, args, rec=rec: setattr(rec, "size", tuple(args[0].shape[-2:]))))
    if not recorders:
        raise ExportError("the U-Net has no cross-attention in its up blocks: nothing to learn a prompt with")
    return recorders, handles


def learn_prompt(unet: Any, text_encoder: Any, tokenizer: Any, latent: torch.Tensor, mask: np.ndarray,
                 alpha_bar: float, timestep: int, steps: int = 100, lr: float = 0.05, seed: int = 0,
                 progress: bool = True, log: Callable[[str], None] = print) -> PromptLearning:
    """Optimise one token so that its cross-attention on ``latent`` (the first frame's VAE latent,
    [1,4,h,w]) matches ``mask`` (HxW, values in [0, 1]); see the module docstring."""
    from tqdm import tqdm

    if steps < 1:
        raise ExportError(f"--steps must be >= 1, got {steps}")
    if not np.any(mask > 0):
        raise ExportError("the mask is empty: there is nothing for the token to attend to")
    for module in (unet, text_encoder):
        module.requires_grad_(False).eval()
    length = tokenizer.model_max_length
    empty = tokenizer([""], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    ids = torch.cat([empty[:, :1], empty[:, -1:], empty[:, 1:-1]], dim=1)  # <start> <slot> <end> <pad>...
    token = 1
    table = text_encoder.get_input_embeddings()
    learned = torch.nn.Parameter(table.weight.detach().mean(dim=0).clone())

    def put_token(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[:, :token], learned.expand(out.shape[0], 1, -1), out[:, token + 1 :]], dim=1)

    g = torch.Generator().manual_seed(seed)
    x_t = alpha_bar**0.5 * latent + (1 - alpha_bar) ** 0.5 * torch.randn(latent.shape, generator=g)
    recorders, handles = _token_maps(unet, token)
    handles.append(table.register_forward_hook(put_token))
    optimiser = torch.optim.Adam([learned], lr=lr)
    result = PromptLearning(context=torch.empty(0), token_embedding=learned.detach(), layers=[r[0] for r in recorders])

    def forward() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        context = text_encoder(ids)[0]
        unet(x_t, timestep, encoder_hidden_states=context)
        size = max((r[1].size for r in recorders), key=lambda s: s[0] * s[1])
        maps = [F.interpolate(r[1].map.reshape(1, 1, *r[1].size), size=size, mode="bilinear", align_corners=False)
                for r in recorders]
        a = torch.stack(maps).mean(dim=0)[0, 0]
        target = F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], size)[0, 0]
        return context, (a - a.min()) / (a.max() - a.min() + 1e-8), target

    try:
        bar = tqdm(range(steps), desc="prompt learning", unit="step", disable=not progress)
        for step in bar:
            optimiser.zero_grad()
            _, a, target = forward()
            if step == 0:
                result.map_before, result.target = a.detach().numpy().copy(), target.numpy()
            loss = F.mse_loss(a, target)
            loss.backward()
            optimiser.step()
            result.losses.append(loss.item())
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        with torch.no_grad():
            context, a, _ = forward()
        result.map_after = a.numpy()
        result.context = context.detach().clone()
        result.token_embedding = learned.detach().clone()
    finally:
        for h in handles:
            h.remove()
        for _, _, attn, processor in recorders:
            attn.processor = processor
    log(f"prompt learning: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}, map/mask IoU "
        f"{result.agreement('before'):.3f} -> {result.agreement('after'):.3f}")
    return result


def loss_plot_png(losses: list[float], title: str = "prompt learning") -> bytes:
    """The loss curve as PNG bytes (matplotlib, headless)."""
    import io

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ExportError("the loss plot needs matplotlib (pip install 'diffvos[sd]')") from exc
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE(cross-attention map, mask)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_json(result: PromptLearning, frame: str, mask: str, steps: int, lr: float) -> str:
    return json.dumps({"frame": frame, "mask": mask, "lr": lr, **result.report(), "requested_steps": steps},
                      indent=2) + "\n"


def load_text_side(model: str | Path) -> tuple[Any, Any]:
    """The tokenizer and text encoder of a diffusers directory (prompt learning needs both)."""
    from transformers import AutoTokenizer, CLIPTextModel

    from diffvos.errors import CheckpointError

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=torch.float32)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer/text encoder ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})", model) from None
    return tokenizer, encoder.eval()
