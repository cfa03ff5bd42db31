"""From export settings to a :class:`PreparedBackbone` for each supported backbone.

Each ``prepare_*`` loads the real weights, checks the layer and the input size against the
model (errors list the valid layers with their strides and channels), builds the truncated,
constant-folded module and gathers the manifest facts (ᾱ_t, stride, channels, FLOPs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffvos.bundle import (
    DDIM,
    NOISE_GRAPH,
    Affinity,
    Checkpoint,
    Flops,
    Latent,
    Preprocess,
    sha256_file,
)
from diffvos.bundle.sizes import check_size
from diffvos.config import EXPORT_DEFAULTS
from diffvos.errors import ExportError
from diffvos.export.onnx_export import GraphSpec, PreparedBackbone, feature_dynamic_axes

ADM, SD, MOBILENET = EXPORT_DEFAULTS["adm"], EXPORT_DEFAULTS["sd"], EXPORT_DEFAULTS["mobilenetv2"]


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


def _dynamic(dynamic: bool) -> dict[str, dict[int, str]] | None:
    return feature_dynamic_axes("x_t", "features") if dynamic else None


def _noise_graph(module: Any, x_t: Any, timestep: int, dynamic: bool, alphas: Any, schedule: str,
                 prediction: str = "epsilon") -> tuple[GraphSpec, DDIM]:
    """The noise-prediction graph for DDIM inversion and its manifest section."""
    from diffvos.export.ddim import (
        NOISE_INPUTS,
        NOISE_OUTPUT,
        example_inputs,
        noise_dynamic_axes,
    )

    spec = GraphSpec(NOISE_GRAPH, module.eval(), example_inputs(x_t, timestep), NOISE_INPUTS, NOISE_OUTPUT,
                     noise_dynamic_axes(dynamic))
    section = DDIM(graph=NOISE_GRAPH, alphas_cumprod=[float(a) for a in alphas], sample_input=NOISE_INPUTS[0],
                   timestep_input=NOISE_INPUTS[1], output=NOISE_OUTPUT, prediction=prediction, schedule=schedule)
    return spec, section


def prepare_adm(checkpoint: str | Path, *, model_config: str | Path | None = None, timestep: int = ADM.timestep,
                layer: int = ADM.layer, ensemble: int = ADM.ensemble, height: int = ADM.height,
                width: int = ADM.width, dynamic: bool = False, attention: bool = False,
                noise_graph: bool = False) -> PreparedBackbone:
    """ADM (guided-diffusion) from a checkpoint file or alias, truncated after output block ``layer``.

    ``attention``: the graph returns the query/key projections of the self-attention in output
    block ``layer`` instead of the block's output; ``noise_graph``: the bundle also holds
    eps_theta(x_t, t) for DDIM inversion."""
    import torch

    from diffvos.bundle.schedules import linear_alphas_cumprod
    from diffvos.export.adm import ADMConfig, ADMUNet, TruncatedADM, load_adm
    from diffvos.export.download import resolve_checkpoint
    from diffvos.export.flops import count_flops

    config = ADMConfig.from_json(model_config) if model_config else ADMConfig()
    check_size(height, width, config.total_stride, "ADM")
    with torch.device("meta"):
        skeleton = ADMUNet(config)
    table = skeleton.layer_table(height, width)
    if not 0 <= layer < len(table):
        raise layer_error("ADM decoder", layer, table)
    alphas = linear_alphas_cumprod()
    if not 0 <= timestep < len(alphas):
        raise ExportError(f"time step {timestep} is out of range 0..{len(alphas) - 1}")
    if ensemble < 1:
        raise ExportError(f"ensemble size must be >= 1, got {ensemble}")
    affinity, stride, channels = Affinity(), table[layer]["stride"], table[layer]["channels"]
    if attention:
        from diffvos.export.attention import (
            TruncatedADMAttention,
            adm_attention_table,
            attention_row,
        )

        row = attention_row(adm_attention_table(skeleton, height, width), layer, "ADM")
        affinity = Affinity(kind="attention", heads=row["heads"], head_dim=row["head_dim"], module=row["module"])
        stride, channels = row["stride"], 2 * row["heads"] * row["head_dim"]
        graph_module = TruncatedADMAttention
    else:
        graph_module = TruncatedADM
    path = resolve_checkpoint(checkpoint)
    model = load_adm(path, config)
    truncated = graph_module(model, timestep, layer).eval()
    alpha_bar = float(alphas[timestep])
    with torch.device("meta"):
        x = torch.empty(1, 3, height, width)
        flops = Flops(full=count_flops(skeleton, x, torch.tensor([timestep])),
                      truncated=count_flops(graph_module(skeleton, timestep, layer), x),
                      per="one noise draw", height=height, width=width)
    example = _example_input(ensemble, 3, height, width, alpha_bar)
    graphs = [GraphSpec("features", truncated, example, "x_t", "features", _dynamic(dynamic))]
    ddim = None
    if noise_graph:
        from diffvos.export.ddim import ADMNoisePrediction

        spec, ddim = _noise_graph(ADMNoisePrediction(model), example, timestep, dynamic, alphas,
                                  "linear 1e-4..0.02, 1000 steps")
        graphs.append(spec)
    return PreparedBackbone(
        backbone="adm",
        graphs=graphs,
        timestep=timestep,
        alpha_bar=alpha_bar,
        layer=layer,
        stride=stride,
        channels=channels,
        affinity=affinity,
        ddim=ddim,
        ensemble=ensemble,
        height=height,
        width=width,
        preprocess=Preprocess(color="RGB", scale=2 / 255, offset=-1.0, short_side=480, multiple=config.total_stride),
        checkpoint=Checkpoint(name=path.name, sha256=sha256_file(path), config=config.to_dict(),
                              schedule="linear 1e-4..0.02, 1000 steps"),
        flops=flops,
    )


def prepare_mobilenetv2(weights: str | Path | None = None, *, layer: int = MOBILENET.layer,
                        height: int = MOBILENET.height, width: int = MOBILENET.width,
                        dynamic: bool = False) -> PreparedBackbone:
    """ImageNet MobileNetV2, an offline baseline (not a diffusion model): no noise, ᾱ = 1, E = 1."""
    from diffvos.export.flops import count_flops
    from diffvos.export.mobilenet import (
        TruncatedMobileNetV2,
        check_mobilenet_size,
        default_weights_path,
        load_mobilenet_v2,
    )

    stride = check_mobilenet_size(height, width, layer)
    path = Path(weights) if weights else default_weights_path()
    model = load_mobilenet_v2(path)
    truncated = TruncatedMobileNetV2(model, layer).eval()
    example = _example_input(1, 3, height, width, 1.0)
    flops = Flops(truncated=count_flops(truncated, example), full=count_flops(model, example), per="frame",
                  height=height, width=width)
    return PreparedBackbone(
        backbone="mobilenetv2",
        graphs=[GraphSpec("features", truncated, example, "x_t", "features", _dynamic(dynamic))],
        timestep=0,
        alpha_bar=1.0,
        layer=layer,
        stride=stride,
        channels=truncated.channels,
        ensemble=1,
        height=height,
        width=width,
        preprocess=Preprocess(color="RGB", scale=2 / 255, offset=-1.0, short_side=480, multiple=32),
        checkpoint=Checkpoint(name=path.name, sha256=sha256_file(path),
                              note="torchvision ImageNet MobileNetV2, offline baseline"),
        flops=flops,
        note="MobileNetV2 is a non-diffusion baseline for demos and tests",
    )


def prepare_sd(model: str | Path, *, timestep: int = SD.timestep, layer: int = SD.layer,
               ensemble: int = SD.ensemble, height: int = SD.height, width: int = SD.width,
               dynamic: bool = False, attention: bool = False, noise_graph: bool = False,
               prompt_embeds: str | Path | None = None) -> PreparedBackbone:
    """Stable Diffusion: VAE encoder graph (image -> scaled latent) + truncated U-Net graph.

    ``attention``: the U-Net graph returns the query/key projections of attn1 after up-resnet
    ``layer``; ``noise_graph``: the bundle also holds the U-Net's noise prediction for DDIM
    inversion; ``prompt_embeds``: a [1, tokens, dim] .npy/.pt file folded instead of the empty
    prompt (e.g. from ``diffvos prompt-learn``)."""
    import torch

    from diffvos.export.flops import count_flops
    from diffvos.export.sd import (
        TruncatedSDUNet,
        VAEEncoderGraph,
        check_sd_layer,
        load_sd,
    )

    if ensemble < 1:
        raise ExportError(f"ensemble size must be >= 1, got {ensemble}")
    c = load_sd(model, prompt_embeds=prompt_embeds)
    f = c.vae_factor
    check_size(height, width, f, "Stable Diffusion", "the VAE factor")
    table = c.layer_table(height, width)
    check_sd_layer(layer, table)
    alpha_bar = c.alpha_bar(timestep)
    row = table[layer]
    affinity = Affinity()
    if attention:
        from diffvos.export.attention import (
            TruncatedSDAttention,
            attention_row,
            sd_attention_table,
        )

        arow = attention_row(sd_attention_table(c.unet, -(-height // f), -(-width // f), f), layer, "SD")
        affinity = Affinity(kind="attention", heads=arow["heads"], head_dim=arow["head_dim"], module=arow["module"])
        row = {**row, "channels": 2 * arow["heads"] * arow["head_dim"]}
        unet = TruncatedSDAttention(c.unet, timestep, layer, c.prompt_embeds, f).eval()
    else:
        unet = TruncatedSDUNet(c.unet, timestep, layer, c.prompt_embeds, f).eval()
    vae = VAEEncoderGraph(c.vae, "mean").eval()
    image = _example_input(1, 3, height, width, 1.0).clamp(-1, 1)
    x_t = _example_input(ensemble, c.latent_channels, height // f, width // f, alpha_bar)
    with torch.no_grad():
        flops = Flops(truncated=count_flops(unet, x_t[:1]), vae_encoder=count_flops(vae, image),
                      per="one noise draw (U-Net); VAE once per frame", height=height, width=width)
    dyn_image = {"image": {2: "height", 3: "width"}, "latent": {2: "latent_height", 3: "latent_width"}}
    source = Path(str(model))
    checkpoint = Checkpoint(name=source.name or str(model), source=str(model), prompt_embeds=c.prompt_origin)
    if source.is_dir():
        unet_files = sorted((source / "unet").glob("*.safetensors")) or sorted((source / "unet").glob("*.bin"))
        if unet_files:
            checkpoint.sha256 = sha256_file(unet_files[0])
            checkpoint.weights_file = f"unet/{unet_files[0].name}"
    graphs = [
        GraphSpec("vae_encoder", vae, image, "image", "latent", dyn_image if dynamic else None),
        GraphSpec("features", unet, x_t, "x_t", "features", _dynamic(dynamic)),
    ]
    ddim = None
    if noise_graph:
        from diffvos.export.ddim import SDNoisePrediction, prediction_type
        from diffvos.export.sd import alphas_cumprod

        cfg = c.scheduler_config
        alphas = alphas_cumprod(cfg)
        spec, ddim = _noise_graph(SDNoisePrediction(c.unet, c.prompt_embeds), x_t, timestep, dynamic,
                                  alphas, f"{cfg.get('beta_schedule', 'linear')} "
                                  f"{cfg.get('beta_start')}..{cfg.get('beta_end')}, {len(alphas)} steps",
                                  prediction_type(cfg))
        graphs.append(spec)
    return PreparedBackbone(
        backbone="sd",
        graphs=graphs,
        affinity=affinity,
        ddim=ddim,
        timestep=timestep,
        alpha_bar=alpha_bar,
        layer=layer,
        stride=row["stride"],
        channels=row["channels"],
        ensemble=ensemble,
        height=height,
        width=width,
        preprocess=Preprocess(color="RGB", scale=2 / 255, offset=-1.0, short_side=480, multiple=max(f, row["stride"])),
        latent=Latent(scaling_factor=c.scaling_factor, downsample=f, channels=c.latent_channels, posterior="mean"),
        checkpoint=checkpoint,
        flops=flops,
    )
