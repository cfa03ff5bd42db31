"""``diffvos calibrate``, ``diffvos fp16`` and ``diffvos build-engine`` (light imports only)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


def register(sub: Subcommands) -> None:
    from diffvos.calibration.options import (
        METHODS,
        TARGETS,
        CalibrationOptions,
        GateLimits,
    )
    from diffvos.config import PropagationConfig, SessionConfig, add_options

    d, lim = CalibrationOptions(), GateLimits()
    p = sub.add_parser("calibrate", help="INT8 (Q/DQ) bundle from an FP32 bundle and calibration frames, written "
                       "only if its masks agree with FP32's")
    p.add_argument("--bundle", required=True, help="FP32 bundle directory")
    p.add_argument("--frames", required=True, nargs="+", help="videos and/or frame folders to sample from")
    p.add_argument("--masks", nargs="+", metavar="MASK",
                   help="per --frames source, in order: its first frame's mask (PNG), a folder of per-frame "
                   "annotations (ground truth: J&F is checked too), or '-' for none (a grid of stand-in objects)")
    p.add_argument("--num-frames", type=int, default=d.num_frames,
                   help=f"calibration frames, spread evenly (default {d.num_frames})")
    p.add_argument("--heldout", type=int, default=d.heldout,
                   help=f"held-out frames for the feature report and the sensitivity table (default {d.heldout})")
    p.add_argument("--output", "-o", required=True, help="new bundle directory")
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--percentile", type=float, default=d.percentile)
    p.add_argument("--target", choices=TARGETS, default=d.target,
                   help="tensorrt: symmetric int8, float biases, Q/DQ on op inputs (TensorRT's placement; ONNX "
                        "Runtime runs it too); cpu: uint8 activations for ONNX Runtime's CPU kernels only")
    p.add_argument("--ops", help="quantise only these op types (comma list, e.g. Conv; 'all' for every op type) "
                        "instead of the default candidates")
    p.add_argument("--exclude", default="", help="node names always kept in float (comma list)")
    p.add_argument("--search", action=argparse.BooleanOptionalAction, default=d.search,
                   help="search which nodes to keep in float, most sensitive first, until the masks pass "
                   "(--no-search: every node of the op types in INT8)")
    p.add_argument("--sensitivity-nodes", type=int, default=d.sensitivity_nodes, metavar="N",
                   help="measure the sensitivity of N nodes spread through the graph, the rest ranked after them "
                   "(default 0: all)")
    p.add_argument("--proxy-frames", type=int, default=d.proxy_frames,
                   help=f"frames of each calibration video the search tracks (default {d.proxy_frames})")
    p.add_argument("--min-iou", type=float, default=lim.min_iou,
                   help=f"mean mask IoU vs FP32 needed per held-out video (default {lim.min_iou}; on the calibration "
                   "videos lowered to FP32's own agreement under --noise-level where that is lower)")
    p.add_argument("--max-jf-drop", type=float, default=lim.max_jf_drop,
                   help=f"J&F points (0-100) INT8 may lose against FP32 per video with ground truth "
                   f"(default {lim.max_jf_drop})")
    p.add_argument("--noise-level", type=float, default=lim.noise_level,
                   help=f"grey levels of input noise defining the calibration videos' IoU noise floor (default "
                   f"{lim.noise_level:g}; 0: --min-iou there too)")
    p.add_argument("--heldout-video", action="append", default=[], metavar="VIDEO",
                   help="video or frame folder for the mask gate (repeatable; default: the calibration videos, "
                   "scored on their frames not used for calibration)")
    p.add_argument("--heldout-mask", action="append", default=[], metavar="MASK",
                   help="one per --heldout-video: its first mask (PNG) or its annotation folder (then J&F too)")
    p.add_argument("--heldout-max-frames", type=int, default=d.heldout_max_frames,
                   help="frames tracked per gate video (default 0: all)")
    p.add_argument("--allow-failed", action="store_true",
                   help="write the bundle even if the gate fails (marked failed: the runtime refuses it without "
                   "--allow-failed-calibration)")
    p.add_argument("--speed-runs", type=int, default=d.speed_runs,
                   help=f"alternating CPU runs timing INT8 against FP32 (default {d.speed_runs}; 0: skip)")
    p.add_argument("--trt-version", default=d.trt_version,
                   help="TensorRT version named in the legacy calibration cache")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    add_options(p.add_argument_group("tracking in the mask gate (as diffvos track)"), PropagationConfig)
    add_options(p.add_argument_group("noise (use the values you track with)"), SessionConfig)
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
    from diffvos.calibration.calibrate import calibrate_bundle
    from diffvos.calibration.options import CalibrationOptions, GateLimits
    from diffvos.calibration.quantize import QuantConfig
    from diffvos.config import session_config_from_args
    from diffvos.errors import InputError
    from diffvos.io.outputs import guard_outputs

    configs = None
    if args.ops:
        ops = None if args.ops.strip().lower() == "all" else _csv(args.ops)
        configs = [QuantConfig("user", ops, exclude=_csv(args.exclude), target=args.target)]
    if len(args.heldout_video) != len(args.heldout_mask):
        raise InputError(f"give one --heldout-mask per --heldout-video ({len(args.heldout_video)} video(s), "
                         f"{len(args.heldout_mask)} mask(s))")
    masks = None if args.masks is None else [None if m == "-" else m for m in args.masks]
    for name in ("num_frames", "heldout", "proxy_frames"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    opts = CalibrationOptions(
        num_frames=args.num_frames, heldout=args.heldout, method=args.method, percentile=args.percentile,
        target=args.target, configs=configs, exclude=_csv(args.exclude), search=args.search,
        sensitivity_nodes=max(args.sensitivity_nodes, 0), proxy_frames=args.proxy_frames,
        limits=GateLimits(min_iou=args.min_iou, max_jf_drop=args.max_jf_drop, noise_level=max(args.noise_level, 0.0)),
        session=session_config_from_args(args), masks=masks,
        heldout_videos=list(zip(args.heldout_video, args.heldout_mask)), heldout_max_frames=args.heldout_max_frames,
        speed_runs=max(args.speed_runs, 0), threads=args.threads, trt_version=args.trt_version,
        allow_failed=args.allow_failed,
    )
    inputs = {"--bundle": args.bundle, **{f"--heldout-video {v}": v for v in args.heldout_video},
              **{f"--heldout-mask {m}": m for m in args.heldout_mask}, **{f"--frames {f}": f for f in args.frames}}
    with guard_outputs({"--output": args.output}, inputs, force=args.force, dirs=("--output",)):
        report = calibrate_bundle(args.bundle, args.frames, args.output, opts, force=args.force)
    return 0 if report.passed else 3


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
