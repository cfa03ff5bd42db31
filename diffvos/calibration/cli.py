"""``diffvos calibrate``, ``diffvos fp16`` and ``diffvos build-engine`` (light imports only)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def register(sub: Subcommands) -> None:
    p = sub.add_parser("calibrate", help="INT8 (Q/DQ) bundle from an FP32 bundle and calibration frames")
    p.add_argument("--bundle", required=True, help="FP32 bundle directory")
    p.add_argument("--frames", required=True, nargs="+", help="videos and/or frame folders to sample from")
    p.add_argument("--num-frames", type=int, default=64, help="calibration frames, spread evenly (default 64)")
    p.add_argument("--heldout", type=int, default=8, help="held-out frames for the accuracy report (default 8)")
    p.add_argument("--output", "-o", required=True, help="new bundle directory")
    p.add_argument("--method", choices=("entropy", "percentile", "minmax"), default="entropy")
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="tensorrt: symmetric int8, float biases (runs on TensorRT and ONNX Runtime); "
                        "cpu: uint8 activations for ONNX Runtime's CPU kernels only")
    p.add_argument("--ops", help="quantise only these op types (comma list, e.g. Conv; 'all' for every op type) "
                        "instead of measuring the default candidates")
    p.add_argument("--exclude", default="", help="node names kept in float (comma list)")
    p.add_argument("--min-cosine", type=float, default=0.99, help="held-out feature cosine needed (default 0.99)")
    p.add_argument("--min-iou", type=float, default=0.9, help="held-out mask IoU vs FP32 needed (default 0.9)")
    p.add_argument("--heldout-video", help="video or frame folder for the mask-agreement check")
    p.add_argument("--heldout-mask", help="its first-frame mask")
    p.add_argument("--heldout-max-frames", type=int, default=30)
    p.add_argument("--sensitivity", type=int, default=12, metavar="N",
                   help="per-layer sensitivity over N nodes spread through the graph (0: off, -1: all)")
    p.add_argument("--trt-version", default="10.3.0", help="TensorRT version named in the legacy calibration cache")
    p.add_argument("--seed", type=int, default=0, help="noise seed: use the one you track with (default 0)")
    p.add_argument("--fresh-noise", action="store_true", help="new noise per frame (as --fresh-noise in track)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run_calibrate)

    p = sub.add_parser("fp16", help="FP16-typed copy of an FP32 bundle (float32 I/O)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--keep-float32", default=None,
                   help="op types kept in float32 (comma list; default normalisation, softmax, ReduceMean, Pow)")
    p.add_argument("--min-cosine", type=float, default=0.999)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run_fp16)

    from diffvos.config import TRT_OPT_LEVEL, TRT_WORKSPACE_GB

    p = sub.add_parser("build-engine", help="build the TensorRT engines (strongly typed) of every graph of a bundle")
    p.add_argument("--bundle", required=True)
    p.add_argument("--graph", action="append", dest="graphs", metavar="NAME",
                   help="build only this graph (repeatable; default: every graph, e.g. vae_encoder and features)")
    p.add_argument("--workspace", type=float, default=TRT_WORKSPACE_GB,
                   help=f"builder workspace limit in GB (default {TRT_WORKSPACE_GB:g})")
    p.add_argument("--timing-cache", help="TensorRT timing cache file, read and updated (default: one per GPU and "
                   "TensorRT version in ~/.cache/diffvos/trt)")
    p.add_argument("--opt-level", type=int, default=TRT_OPT_LEVEL,
                   help=f"builder optimisation level 0..5 (default {TRT_OPT_LEVEL})")
    p.add_argument("--opt-size", help="HxW frame input size a dynamic bundle's profile is optimised for "
                   "(default: a 854x480 frame by METHOD's rule)")
    p.add_argument("--max-size", help="largest HxW frame input size of a dynamic bundle's profile (default: the "
                   "square of the optimum's long side, e.g. 832x832; the execution context allocates for it)")
    p.add_argument("--opt-streams", type=int, help="streams per call the profile is optimised for (default: the "
                   "bundle's streams.opt_streams; the profile spans 1 .. streams.max_streams)")
    p.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    p.set_defaults(func=run_build_engine)


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def run_calibrate(args: argparse.Namespace) -> int:
    from diffvos.calibration.calibrate import CalibrationOptions, calibrate_bundle
    from diffvos.calibration.quantize import QuantConfig
    from diffvos.io.outputs import guard_outputs

    configs = None
    if args.ops:
        ops = None if args.ops.strip().lower() == "all" else _csv(args.ops)
        configs = [QuantConfig("user", ops, exclude=_csv(args.exclude), target=args.target)]
    elif args.exclude:
        from dataclasses import replace

        from diffvos.calibration.quantize import candidate_configs

        configs = [replace(c, exclude=_csv(args.exclude)) for c in candidate_configs(args.target)]
    opts = CalibrationOptions(
        num_frames=args.num_frames, heldout=args.heldout, method=args.method, percentile=args.percentile,
        target=args.target, configs=configs, min_cosine=args.min_cosine, min_iou=args.min_iou, seed=args.seed,
        fresh_noise=args.fresh_noise, sensitivity=args.sensitivity != 0,
        sensitivity_limit=max(args.sensitivity, 0), threads=args.threads, trt_version=args.trt_version,
        heldout_video=args.heldout_video, heldout_mask=args.heldout_mask, heldout_max_frames=args.heldout_max_frames,
    )
    inputs = {"--bundle": args.bundle, "--heldout-video": args.heldout_video, "--heldout-mask": args.heldout_mask,
              **{f"--frames {f}": f for f in args.frames}}
    with guard_outputs({"--output": args.output}, inputs, force=args.force, dirs=("--output",)):
        report = calibrate_bundle(args.bundle, args.frames, args.output, opts, force=args.force)
    return 0 if report["passed"] else 3


def run_fp16(args: argparse.Namespace) -> int:
    from diffvos.export.fp16 import SENSITIVE_OPS, convert_bundle_fp16
    from diffvos.io.outputs import guard_outputs

    keep = SENSITIVE_OPS if args.keep_float32 is None else _csv(args.keep_float32)
    with guard_outputs({"--output": args.output}, {"--bundle": args.bundle}, force=args.force, dirs=("--output",)):
        convert_bundle_fp16(args.bundle, args.output, keep_ops=keep, min_cosine=args.min_cosine, force=args.force)
    return 0


def _hw(option: str, text: str | None) -> tuple[int, int] | None:
    from diffvos.errors import InputError

    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"{option} must be HxW (e.g. 480x832), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise InputError(f"{option} must be positive, got {text!r}")
    return h, w


def run_build_engine(args: argparse.Namespace) -> int:
    from diffvos.calibration.engine_build import build_bundle_engines

    build_bundle_engines(args.bundle, graphs=args.graphs, workspace_gb=args.workspace, timing_cache=args.timing_cache,
                         opt_level=args.opt_level, opt_hw=_hw("--opt-size", args.opt_size),
                         max_hw=_hw("--max-size", args.max_size), opt_streams=args.opt_streams,
                         device=args.device)
    return 0
