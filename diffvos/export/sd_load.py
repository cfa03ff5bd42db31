"""Stable Diffusion (diffusers layout): loading, the ᾱ schedule and the decoder-layer table.

Nothing here imports torch, diffusers or transformers at module level, so the CLI can import it
at start-up; :func:`load_sd` imports them when called.

Decoder layers are numbered as METHOD.md says: every resnet of every U-Net up block, in order,
from 0. Layer L's feature map is the output of that resnet (what a forward hook on it returns),
before the block's attention and upsampler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from diffvos.errors import CheckpointError, ExportError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "SDComponents",
    "alpha_bar",
    "alphas_cumprod",
    "check_sd_layer",
    "empty_prompt_embedding",
    "load_sd",
    "sd_layer_table",
    "vae_scale_factor",
]

# Subfolders of a diffusers pipeline directory and the file each must hold.
_REQUIRED = {"unet": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json"}
_TEXT = {"text_encoder": "config.json", "tokenizer": None}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SDComponents:
    """What the exporter needs from an SD checkpoint; the text encoder is already used up."""

    unet: Any  # diffusers UNet2DConditionModel, float32, eval
    vae: Any  # diffusers AutoencoderKL, float32, eval
    scheduler_config: dict[str, Any]
    prompt_embeds: "torch.Tensor"  # [1, tokens, cross_attention_dim], the empty prompt's embedding
    source: str  # the directory or hub id it came from
    prompt_origin: str = ""  # where the folded prompt embedding came from

    @property
    def vae_factor(self) -> int:
        return vae_scale_factor(self.vae.config)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def layer_table(self, height: int, width: int) -> list[dict[str, Any]]:
        """The decoder-layer table for an image of height x width pixels."""
        f = self.vae_factor
        return sd_layer_table(self.unet, -(-height // f), -(-width // f), vae_factor=f)

    def alpha_bar(self, timestep: int) -> float:
        return alpha_bar(self.scheduler_config, timestep)


# ----------------------------------------------------------------------------- schedule


def alphas_cumprod(scheduler_config: Mapping[str, Any]) -> np.ndarray:
    """ᾱ_t for t = 0..num_train_timesteps-1 (float64), as diffusers' DDPM/DDIM schedulers build it.

    Supports ``trained_betas`` and ``beta_schedule`` linear, scaled_linear (SD 1.x/2.x) and
    squaredcos_cap_v2, plus ``rescale_betas_zero_snr``.
    """
    cfg = dict(scheduler_config)
    n = int(cfg.get("num_train_timesteps", 1000))
    start = float(cfg.get("beta_start", 0.0001))
    end = float(cfg.get("beta_end", 0.02))
    schedule = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float64)
        n = len(betas)
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif schedule == "squaredcos_cap_v2":
        f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        t = np.arange(n, dtype=np.float64)
        betas = np.minimum(1 - f((t + 1) / n) / f(t / n), 0.999)
    else:
        raise ExportError(f"unsupported beta_schedule {schedule!r} (linear, scaled_linear, squaredcos_cap_v2)")
    if n < 1 or not np.all((betas >= 0) & (betas < 1)):
        raise ExportError(f"scheduler config gives invalid betas (n={n}, range {betas.min()}..{betas.max()})")
    alphas = np.cumprod(1.0 - betas)
    if cfg.get("rescale_betas_zero_snr"):
        # Lin et al. 2024: shift and scale sqrt(ᾱ) so that the last step has zero SNR.
        s = np.sqrt(alphas)
        s0, sT = s[0], s[-1]
        s = (s - sT) * s0 / (s0 - sT)
        alphas = s**2
    return alphas


def alpha_bar(scheduler_config: Mapping[str, Any], t: int) -> float:
    """ᾱ_t of the model's training schedule, t counted from 0 (the index diffusers uses)."""
    alphas = alphas_cumprod(scheduler_config)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < len(alphas):
        raise ExportError(f"time step {t!r} is out of range 0..{len(alphas) - 1}")
    return float(alphas[int(t)])


# ----------------------------------------------------------------------------- layer table


def _config(obj: Any) -> Mapping[str, Any]:
    cfg = getattr(obj, "config", obj)
    return cfg if isinstance(cfg, Mapping) else dict(cfg)


def vae_scale_factor(vae_config: Any) -> int:
    """Pixels per latent cell: 2 ** (number of VAE encoder blocks - 1), 8 for SD."""
    return 2 ** (len(_config(vae_config)["block_out_channels"]) - 1)


def sd_layer_table(unet: Any, latent_h: int, latent_w: int, vae_factor: int = 8) -> list[dict[str, Any]]:
    """One row per decoder layer (every resnet of every up block, in order, from 0).

    ``unet`` is a UNet2DConditionModel or its config. Each row: layer, block, resnet (index in
    its block), stride (pixels per feature cell, VAE factor included), channels, and the feature
    grid height/width for a latent of latent_h x latent_w. Down-sampling rounds up
    (stride-2 convs with padding 1) and up-sampling restores the encoder's sizes, so the grid
    at stride s is ceil(H / s) x ceil(W / s).
    """
    cfg = _config(unet)
    channels = list(cfg["block_out_channels"])
    n = len(channels)
    per_block = cfg["layers_per_block"]
    per_block = [per_block] * n if isinstance(per_block, int) else list(per_block)
    sizes = [(latent_h, latent_w)]
    for _ in range(n - 1):
        h, w = sizes[-1]
        sizes.append((-(-h // 2), -(-w // 2)))
    rows = []
    for block in range(len(cfg["up_block_types"])):
        level = n - 1 - block  # resolution level of this up block's resnets
        for r in range(per_block[level] + 1):
            h, w = sizes[level]
            rows.append({
                "layer": len(rows), "block": block, "resnet": r, "stride": vae_factor * 2**level,
                "channels": channels[level], "height": h, "width": w,
            })
    return rows


def check_sd_layer(layer: int, table: list[dict[str, Any]]) -> int:
    """Raise an ExportError listing every layer's stride and channels when ``layer`` is invalid."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(table):
        rows = "; ".join(f"{r['layer']}: stride {r['stride']}, {r['channels']} ch" for r in table)
        raise ExportError(f"SD decoder layer {layer!r} is out of range 0..{len(table) - 1} ({rows})")
    return layer


# ----------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_dir(root: Path, need_text: bool) -> None:
    needed = dict(_REQUIRED, **(_TEXT if need_text else {}))
    for sub, file in needed.items():
        path = root / sub
        if not path.is_dir():
            raise CheckpointError(f"not a diffusers Stable Diffusion directory: subfolder '{sub}/' is missing", path)
        if file is not None and not (path / file).is_file():
            raise CheckpointError(f"'{file}' is missing", path)


def empty_prompt_embedding(tokenizer: Any, text_encoder: Any) -> "torch.Tensor":
    """The text encoder's last hidden state for "" padded to max_length, as the SD pipelines do.

    Returns [1, tokenizer.model_max_length, hidden] float32.
    """
    import torch

    tokens = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        out = text_encoder(tokens.input_ids, attention_mask=mask)
    return out[0].detach().float().contiguous()


def _load_embedding(path: Path) -> "torch.Tensor":
    import torch

    if not path.is_file():
        raise CheckpointError("prompt embedding file not found", path)
    try:
        data = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read prompt embedding ({_first_line(exc)})", path) from None
    if not isinstance(data, torch.Tensor) or data.dim() not in (2, 3) or (data.dim() == 3 and data.shape[0] != 1):
        raise CheckpointError("prompt embedding must be a [tokens, dim] or [1, tokens, dim] tensor", path)
    return (data[None] if data.dim() == 2 else data).float().contiguous()


def load_sd(model: str | Path, prompt_embeds: str | Path | None = None) -> SDComponents:
    """Load U-Net, VAE, scheduler config and the empty-prompt embedding (float32, CPU, eval).

    ``model`` is a local diffusers pipeline directory or, with network access, a hub id
    (``owner/name``) passed through to ``from_pretrained``. The text encoder is run once here
    and dropped. With ``prompt_embeds`` (.npy or torch file, [1, tokens, dim]) the directory
    needs no text_encoder/ or tokenizer/.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    local = Path(model).expanduser()
    if local.is_dir():
        _check_dir(local, need_text=prompt_embeds is None)
        source, where = str(local), local
    elif _HUB_ID.match(str(model)) and not str(model).startswith((".", "~")):
        source, where = str(model), str(model)
    else:
        raise CheckpointError(
            "model directory not found (give a local diffusers directory with unet/, vae/, scheduler/, "
            "text_encoder/, tokenizer/; hub ids such as 'owner/name' need network access)", local)

    def load(what: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:
            hint = "" if isinstance(where, Path) else " (hub ids need network access, or a copy in the Hugging Face cache)"
            raise CheckpointError(f"cannot load {what}: {_first_line(exc)}{hint}", f"{source}/{what}") from None

    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=torch.float32))
    vae = load("vae", lambda: AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=torch.float32))
    sched = load("scheduler", lambda: dict(DDPMScheduler.load_config(where, subfolder="scheduler")))
    if prompt_embeds is not None:
        embeds = _load_embedding(Path(prompt_embeds))
        origin = str(prompt_embeds)
    else:
        from transformers import AutoTokenizer, CLIPTextModel

        tokenizer = load("tokenizer", lambda: AutoTokenizer.from_pretrained(where, subfolder="tokenizer"))
        encoder = load("text_encoder", lambda: CLIPTextModel.from_pretrained(where, subfolder="text_encoder", dtype=torch.float32))
        embeds = empty_prompt_embedding(tokenizer, encoder.eval())
        origin = "empty prompt via text_encoder"
        del encoder
    cross = unet.config.cross_attention_dim
    if embeds.shape[-1] not in (cross if isinstance(cross, (list, tuple)) else [cross]):
        raise CheckpointError(f"prompt embedding width {embeds.shape[-1]} does not match the U-Net's "
                              f"cross_attention_dim {cross}", prompt_embeds or source)
    return SDComponents(unet=unet.eval(), vae=vae.eval(), scheduler_config=sched, prompt_embeds=embeds,
                        source=source, prompt_origin=origin)

