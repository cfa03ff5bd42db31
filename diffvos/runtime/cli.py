"""``diffvos track``: a video or frame folder + its first mask -> one mask per frame."""

from __future__ import annotations

import argparse

from diffvos.runtime.propagation import DEFAULT_MAG_FILTER


def add_propagation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("propagation (METHOD.md section 2)")
    g.add_argument("--memory", type=int, default=28, help="past frames kept besides the first (default 28)")
    g.add_argument("--topk", type=int, default=15, help="correspondences kept per position (default 15)")
    g.add_argument("--radius", type=int, default=15, help="local window radius in feature cells, 0 = none (default 15)")
    g.add_argument("--temperature", type=float, default=0.2, help="affinity temperature (default 0.2)")
    g.add_argument(
        "--mag-filter",
        default=DEFAULT_MAG_FILTER,
        help="correspondence-magnitude filter: 'off', 'adaptive', or a fixed radius in feature cells "
        f"(default {DEFAULT_MAG_FILTER})",
    )


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--backend", choices=("auto", "tensorrt", "cuda", "cpu", "trt"), default="auto",
                   help="ONNX Runtime provider (default auto: TensorRT EP > CUDA EP > CPU), or 'trt' for the native "
                   "TensorRT runtime on a plan built by 'diffvos build-engine'")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX Runtime (default: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of the fixed noise bank (default 0)")
    g.add_argument("--fresh-noise", action="store_true", help="draw new noise for every frame, as the paper does")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="track the objects of a first-frame mask through a video")
    p.add_argument("--bundle", required=True, help="bundle directory made by 'diffvos export'")
    p.add_argument("--input", "-i", required=True, help="video file or folder of frames (name order)")
    p.add_argument("--mask", "-m", required=True, help="first frame's mask: palette PNG (one index per object) or 0/255 PNG")
    p.add_argument("--output", "-o", required=True, help="folder for one indexed PNG per frame")
    p.add_argument("--overlay", help="also write an overlay video (e.g. out.mp4)")
    p.add_argument("--resize-mask", action="store_true", help="resize a mask whose size differs from the frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_propagation_options(p)
    add_runtime_options(p)
    p.set_defaults(func=run_track)



def propagation_config(args: argparse.Namespace):
    from diffvos.runtime.propagation import PropagationConfig, parse_mag_filter

    return PropagationConfig(
        temperature=args.temperature,
        topk=args.topk,
        radius=args.radius,
        memory=args.memory,
        mag_filter=parse_mag_filter(args.mag_filter),
    )


def run_track(args: argparse.Namespace) -> int:
    from diffvos.runtime.track_video import track_video

    summary = track_video(
        bundle=args.bundle,
        input_path=args.input,
        mask_path=args.mask,
        output_dir=args.output,
        overlay=args.overlay,
        config=propagation_config(args),
        backend=args.backend,
        threads=args.threads,
        seed=args.seed,
        fresh_noise=args.fresh_noise,
        resize_mask=args.resize_mask,
        progress=not args.no_progress,
    )
    print(summary.line())
    return 0
