"""From CLI arguments to a :class:`PreparedBackbone` for each supported backbone.

Each ``prepare_*`` loads the real weights, checks the layer and the input size against the
model (errors list the valid layers with their strides and channels), builds the truncated,
constant-folded module and gathers the manifest facts (ᾱ_t, stride, channels, FLOPs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffvos.export.onnx_export import GraphSpec, PreparedBackbone, check_size, feature_dynamic_axes
from diffvos.runtime.bundle import Preprocess, sha256_file
from diffvos.runtime.errors import ExportError


def layer_error(what: str, layer: int, table: list[dict[str, Any]]) -> ExportError:
    rows = "; ".join(f"{r['layer']}: stride {r['stride']}, {r['channels']} ch" for r in table)
    return ExportError(f"{what} layer {layer} is out of range 0..{len(table) - 1} ({rows})")


def _example_input(ensemble: int, channels: int, height: int, width: int, alpha_bar: float):
    """A realistic x_t for verification: a smooth image in [-1, 1], noised at ᾱ_t."""
    import torch

    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, channels, max(height // 16, 1), max(width // 16, 1), generator=g) * 2 - 1
    x0 = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    eps = torch.randn(ensemble, channels, height, width, generator=g)
    return (alpha_bar**0.5) * x0 + ((1 - alpha_bar) ** 0.5) * eps


def _dynamic(args: argparse.Namespace, spec_in: str = "x_t", spec_out: str = "features"):
    return feature_dynamic_axes(spec_in, spec_out) if getattr(args, "dynamic", False) else None


def _checkpoint_facts(path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_file(path), **(extra or {})}


def prepare_adm(args: argparse.Namespace) -> PreparedBackbone:
    import torch

    from diffvos.export.adm import ADMConfig, ADMUNet, TruncatedADM, load_adm
    from diffvos.export.download import resolve_checkpoint
    from diffvos.export.flops import count_flops
    from diffvos.runtime.schedule import linear_alphas_cumprod

    config = ADMConfig.from_json(args.model_config) if args.model_config else ADMConfig()
    check_size(args.height, args.width, config.total_stride, "ADM")
    with torch.device("meta"):
        skeleton = ADMUNet(config)
    table = skeleton.layer_table(args.height, args.width)
    if not 0 <= args.layer < len(table):
        raise layer_error("ADM decoder", args.layer, table)
    alphas = linear_alphas_cumprod()
    if not 0 <= args.timestep < len(alphas):
        raise ExportError(f"time step {args.timestep} is out of range 0..{len(alphas) - 1}")
    if args.ensemble < 1:
        raise ExportError(f"ensemble size must be >= 1, got {args.ensemble}")
    path = resolve_checkpoint(args.checkpoint)
    model = load_adm(path, config)
    truncated = TruncatedADM(model, args.timestep, args.layer).eval()
    alpha_bar = float(alphas[args.timestep])
    flops = {}
    with torch.device("meta"):
        x = torch.empty(1, 3, args.height, args.width)
        flops["full"] = count_flops(skeleton, x, torch.tensor([args.timestep]))
        flops["truncated"] = count_flops(TruncatedADM(skeleton, args.timestep, args.layer), x)
    flops.update(per="one noise draw", height=args.height, width=args.width)
    return PreparedBackbone(
        backbone="adm",
        graphs=[GraphSpec("features", truncated, _example_input(args.ensemble, 3, args.height, args.width, alpha_bar),
                          "x_t", "features", _dynamic(args))],
        timestep=args.timestep,
        alpha_bar=alpha_bar,
        layer=args.layer,
        stride=table[args.layer]["stride"],
        channels=table[args.layer]["channels"],
        ensemble=args.ensemble,
        height=args.height,
        width=args.width,
        preprocess=Preprocess(color="RGB", scale=2 / 255, offset=-1.0, short_side=480, multiple=config.total_stride),
        checkpoint=_checkpoint_facts(path, {"config": config.to_dict(), "schedule": "linear 1e-4..0.02, 1000 steps"}),
        flops=flops,
    )


def prepare_mobilenetv2(args: argparse.Namespace) -> PreparedBackbone:
    """ImageNet MobileNetV2, an offline baseline (not a diffusion model): no noise, ᾱ = 1, E = 1."""
    import torch

    from diffvos.export.flops import count_flops
    from diffvos.export.mobilenet import (
        DEFAULT_LAYER,
        TruncatedMobileNetV2,
        check_mobilenet_size,
        default_weights_path,
        load_mobilenet_v2,
    )

    layer = DEFAULT_LAYER if getattr(args, "layer", None) is None else args.layer
    stride = check_mobilenet_size(args.height, args.width, layer)
    path = Path(args.weights) if getattr(args, "weights", None) else default_weights_path()
    model = load_mobilenet_v2(path)
    truncated = TruncatedMobileNetV2(model, layer).eval()
    example = _example_input(1, 3, args.height, args.width, 1.0)
    flops = {"truncated": count_flops(truncated, example), "full": count_flops(model, example),
             "per": "frame", "height": args.height, "width": args.width}
    return PreparedBackbone(
        backbone="mobilenetv2",
        graphs=[GraphSpec("features", truncated, example, "x_t", "features", _dynamic(args))],
        timestep=0,
        alpha_bar=1.0,
        layer=layer,
        stride=stride,
        channels=truncated.channels,
        ensemble=1,
        height=args.height,
        width=args.width,
        preprocess=Preprocess(color="RGB", scale=2 / 255, offset=-1.0, short_side=480, multiple=32),
        checkpoint=_checkpoint_facts(path, {"note": "torchvision ImageNet MobileNetV2, offline baseline"}),
        flops=flops,
        extra={"baseline": "MobileNetV2 is a non-diffusion baseline for demos and tests"},
    )


def prepare_sd(args: argparse.Namespace) -> PreparedBackbone:
    """Stable Diffusion: VAE encoder graph (image -> scaled latent) + truncated U-Net graph."""
    import torch

    from diffvos.export.flops import count_flops
    from diffvos.export.sd import TruncatedSDUNet, VAEEncoderGraph, check_sd_layer, load_sd
    from diffvos.runtime.bundle import Latent

    if args.ensemble < 1:
        raise ExportError(f"ensemble size must be >= 1, got {args.ensemble}")
    c = load_sd(args.model)
    f = c.vae_factor
    check_size(args.height, args.width, f, "Stable Diffusion", "the VAE factor")
    table = c.layer_table(args.height, args.width)
    check_sd_layer(args.layer, table)
    alpha_bar = c.alpha_bar(args.timestep)
    unet = TruncatedSDUNet(c.unet, args.timestep, args.layer, c.prompt_embeds, f).eval()
    vae = VAEEncoderGraph(c.vae, "mean").eval()
    image = _example_input(1, 3, args.height, args.width, 1.0).clamp(-1, 1)
    x_t = _example_input(args.ensemble, c.latent_channels, args.height // f, args.width // f, alpha_bar)
    with torch.no_grad():
        flops = {"truncated": count_flops(unet, x_t[:1]), "vae_encoder": count_flops(vae, image),
                 "per": "one noise draw (U-Net); VAE once per frame", "height": args.height, "width": args.width}
    dyn_image = {"image": {2: "height", 3: "width"}, "latent": {2: "latent_height", 3: "latent_width"}}
    source = Path(str(args.model))
    checkpoint = {"name": source.name or str(args.model), "source": str(args.model), **c.extra}
    if source.is_dir():
        unet_files = sorted((source / "unet").glob("*.safetensors")) or sorted((source / "unet").glob("*.bin"))
        if unet_files:
            checkpoint["sha256"] = sha256_file(unet_files[0])
            checkpoint["weights_file"] = f"unet/{unet_files[0].name}"
    row = table[args.layer]
    return PreparedBackbone(
        backbone="sd",
        graphs=[
            GraphSpec("vae_encoder", vae, image, "image", "latent", dyn_image if args.dynamic else None),
            GraphSpec("features", unet, x_t, "x_t", "features", _dynamic(args)),
        ],
        timestep=args.timestep,
        alpha_bar=alpha_bar,
        layer=args.layer,
        stride=row["stride"],
        channels=row["channels"],
        ensemble=args.ensemble,
        height=args.height,
        width=args.width,
        preprocess=Preprocess(color="RGB", scale=2 / 255, offset=-1.0, short_side=480, multiple=max(f, row["stride"])),
        latent=Latent(scaling_factor=c.scaling_factor, downsample=f, channels=c.latent_channels, posterior="mean"),
        checkpoint=checkpoint,
        flops=flops,
    )
