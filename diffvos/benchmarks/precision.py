"""FP32 vs INT8 (Q/DQ) vs FP16 on ONNX Runtime's CPU provider: time per frame and feature cosine.

Default: the ADM-256 architecture (random weights) truncated after output block 6, 256x256,
E=1, t=30 - the issue's benchmark. The INT8 bundle is made by ``diffvos calibrate``'s code on
DAVIS frames (runtime preprocessing and noise), the FP16 bundle by ``diffvos fp16``'s code.
Figures are printed, never asserted. Heavy: about 10 minutes on a 2-core CPU.

    python -m diffvos.benchmarks.precision [--work DIR] [--tiny] [--runs 5] [--calib 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DAVIS = ROOT.parent / "shared" / "data" / "davis2016" / "JPEGImages" / "480p"
FIXTURE = ROOT.parent / "shared" / "fixtures" / "adm"


def export_adm(out: Path, tiny: bool, layer: int = 6, t: int = 30) -> Path:
    if (out / "diffvos.json").is_file():
        return out
    import torch

    from diffvos.bundle.schedules import linear_alphas_cumprod
    from diffvos.export.adm import ADMConfig, ADMUNet, TruncatedADM
    from diffvos.export.onnx_export import GraphSpec, PreparedBackbone, write_bundle

    torch.manual_seed(0)
    if tiny:
        cfg = json.loads((FIXTURE / "adm_tiny_config.json").read_text())
        model = ADMUNet(ADMConfig.from_dict(cfg))
        model.load_state_dict(torch.load(FIXTURE / "adm_tiny_state_dict.pt", weights_only=True))
        (h, w), e = cfg["input_hw"], cfg["ensemble"]
    else:
        model, (h, w), e = ADMUNet(ADMConfig()), (256, 256), 1
    trunc = TruncatedADM(model.eval(), t, layer).eval()
    spec = GraphSpec("features", trunc, torch.randn(e, 3, h, w), "x_t", "features")
    prepared = PreparedBackbone("adm", [spec], t, float(linear_alphas_cumprod()[t]), layer, trunc.stride,
                                trunc.channels, e, h, w)
    write_bundle(prepared, out, verify=tiny, force=True)
    return out


def median_ms(path: Path, x: np.ndarray, runs: int, threads: int) -> tuple[float, np.ndarray]:
    from diffvos.runtime.ort_engine import OrtLoader

    engine = OrtLoader(path, backend="cpu", threads=threads)()
    feed = {engine.inputs[0].name: x}
    out = next(iter(engine.infer(feed).values()))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.infer(feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/diffvos-bench-precision")
    ap.add_argument("--tiny", action="store_true", help="the tiny ADM fixture at 64x96 instead of ADM-256")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calib", type=int, default=8, help="calibration frames")
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--target", default="tensorrt", choices=("tensorrt", "cpu"))
    ap.add_argument("--sensitivity", type=int, default=0,
                    help="nodes in the sensitivity table, with the mixed-precision search (0: neither)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    from diffvos.bundle.compare import compare
    from diffvos.calibration.calibrate import calibrate_bundle
    from diffvos.calibration.options import CalibrationOptions
    from diffvos.export.fp16 import convert_bundle_fp16
    from diffvos.io.frames import open_frames
    from diffvos.runtime.features import Features
    from diffvos.runtime.session import Runtime

    work = Path(args.work) / ("tiny" if args.tiny else "adm256")
    t0 = time.perf_counter()
    fp32 = export_adm(work / "fp32", args.tiny)
    print(f"fp32 bundle ready ({time.perf_counter() - t0:.0f} s)")
    videos = [DAVIS / v for v in ("surf", "motorbike", "breakdance-flare")]
    annotations = DAVIS.parent.parent / "Annotations" / "480p"
    opts = CalibrationOptions(num_frames=args.calib, heldout=2, method=args.method, target=args.target,
                              search=args.sensitivity > 0, sensitivity_nodes=args.sensitivity, proxy_frames=3,
                              speed_runs=0, threads=args.threads, masks=[str(annotations / v.name) for v in videos],
                              heldout_videos=[(str(DAVIS / "dog-agility"), str(annotations / "dog-agility"))],
                              heldout_max_frames=4 if not args.tiny else 20, allow_failed=True)
    t0 = time.perf_counter()
    report = calibrate_bundle(fp32, videos, work / "int8", opts, force=True)
    print(f"calibration + report: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    convert_bundle_fp16(fp32, work / "fp16", force=True, min_cosine=0.99)
    print(f"fp16 conversion: {time.perf_counter() - t0:.0f} s")

    # a held-out frame (rollerblade is not a calibration video), noised exactly as the runtime does
    runtime = Runtime(fp32, backend="cpu")
    clip = open_frames(DAVIS / "rollerblade")
    (frame,) = clip.select([len(clip) // 2])
    (x,) = Features(runtime.manifest, runtime.engines).prepare(frame.bgr).values()
    rows = {}
    for name in ("fp32", "int8", "fp16"):
        ms, out = median_ms(work / name / "features.onnx", x, args.runs, args.threads)
        rows[name] = (ms, out)
    base_ms, ref = rows["fp32"]
    what = "tiny ADM 64x96 E=2" if args.tiny else "ADM-256 arch (random weights), output block 6, 256x256, E=1"
    print(f"\n{what}; ONNX Runtime CPU, median of {args.runs} runs")
    print(f"{'precision':<10}{'ms/frame':>12}{'speedup':>10}{'cosine':>12}{'rel.err':>10}")
    for name, (ms, out) in rows.items():
        c = compare(ref, out)
        print(f"{name:<10}{ms:>12.1f}{base_ms / ms:>9.2f}x{c.cosine:>12.6f}{c.max_rel_error:>10.4f}")
    if args.target == "tensorrt":
        print("(--target tensorrt places Q/DQ as TensorRT wants them, which ONNX Runtime's CPU provider does not "
              "fuse into integer kernels: the INT8 row is the accuracy-check graph, its speed comes from TensorRT; "
              "--target cpu times ONNX Runtime's own INT8 kernels)")
    print(f"calibration report {'PASS' if report.passed else 'FAIL'} (from '{report.chosen['name']}', "
          f"{len(report.kept_float)} node(s) kept float)")


if __name__ == "__main__":
    main()
