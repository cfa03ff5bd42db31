"""Efficiency against the machine: FLOPs of the feature graph (counted), the FLOP/s ONNX Runtime
achieves on it, and the same machine's measured peak for a large float32 matrix product.

    python -m diffvos.benchmarks.efficiency [--configs adm256 tiny] [--runs 3] [--matmul-size 4096]
    diffvos bench efficiency ...          (same options)

FLOPs: torch's FLOP counter (a multiply-add = 2; convolutions and matmuls, not norms or
activations) on the truncated graph for one noise draw, times E: the manifest's count made at
export, or counted here on the meta device when the manifest has none. Achieved = FLOPs / the
median ``session.run`` time of the feature graph (noise and preprocessing excluded). Peak =
2n^3 / the best time of an n x n float32 product, in numpy (OpenBLAS) and in torch, the higher
taken. The bundles are the ones ``pipeline`` makes (same work folder, same seed).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _pipeline_module():
    from diffvos.benchmarks import pipeline

    return pipeline


def matmul_peak(n: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` FLOP/s of an n x n float32 product in numpy and in torch."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    result = {}
    np.matmul(a, b, out=out)  # warm-up
    best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    result["numpy"] = 2 * n**3 / best
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tout = torch.empty_like(ta)
        torch.matmul(ta, tb, out=tout)
        best = min(_timed(lambda: torch.matmul(ta, tb, out=tout)) for _ in range(repeats))
        result["torch"] = 2 * n**3 / best
    except ImportError:
        pass
    return result


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def graph_flops(bundle: Path, config=None) -> tuple[int, str]:
    """(FLOPs per frame = per draw x E, where the count came from). ``config``: the ADMConfig to
    count with when the manifest has neither a count nor the model's config."""
    from diffvos.bundle import read_manifest

    m = read_manifest(bundle, verify_files=False)
    per_draw = m.flops.truncated
    source = "manifest (counted at export)"
    if not per_draw:
        import torch

        from diffvos.export.adm import ADMConfig, ADMUNet, TruncatedADM
        from diffvos.export.flops import count_flops

        if config is None and not m.checkpoint.config:
            raise SystemExit(f"bench efficiency: {bundle}: the manifest has no FLOP count and no model config")
        cfg = config or ADMConfig.from_dict(m.checkpoint.config)
        with torch.device("meta"):
            per_draw = count_flops(TruncatedADM(ADMUNet(cfg), m.timestep, m.layer), torch.empty(1, 3, m.height, m.width))
        source = "counted now (meta device)"
    return int(per_draw) * m.ensemble, source


def time_graph(bundle: Path, runs: int, threads: int) -> tuple[float, str]:
    """Median seconds of one feature-graph run on a realistic x_t, and the provider."""
    from diffvos.runtime.session import Runtime

    runtime = Runtime(bundle, backend="cpu", threads=threads)
    m, engine = runtime.manifest, runtime.engines["features"]
    x = np.random.default_rng(0).standard_normal((m.ensemble, 3, m.height, m.width), dtype=np.float32)
    feed = {engine.inputs[0].name: x}
    engine.infer(feed)  # warm-up (first run allocates)
    times = [_timed(lambda: engine.infer(feed)) for _ in range(runs)]
    return statistics.median(times), engine.provider


def run(args: argparse.Namespace) -> int:
    import os

    bp = _pipeline_module()
    workdir = Path(args.workdir)
    peak = matmul_peak(args.matmul_size)
    best_lib = max(peak, key=peak.get)
    print(f"machine: {os.cpu_count()} CPUs; {args.matmul_size}x{args.matmul_size} float32 matmul peak: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()), flush=True)
    rows = []
    for name in args.configs:
        case = bp.make_case(name, args.fixtures)
        bundle = bp.bundle_for(case, bp.checkpoint_for(case, workdir, args.seed), workdir)
        flops, source = graph_flops(bundle)
        seconds, provider = time_graph(bundle, args.runs, args.threads)
        rows.append((case.label, flops, source, seconds, flops / seconds, provider))
        print(f"  {case.label}: {flops / 1e12:.3f} TFLOP per frame, {seconds:.2f} s per run", flush=True)
    print(f"\n| config | feature graph FLOPs per frame | median run s | achieved GFLOP/s | machine peak GFLOP/s "
          f"({best_lib} matmul {args.matmul_size}^2) | % of peak |\n|---|---:|---:|---:|---:|---:|")
    for label, flops, source, seconds, rate, provider in rows:
        print(f"| {label} | {flops / 1e12:.3f} T | {seconds:.2f} | {rate / 1e9:.1f} | {peak[best_lib] / 1e9:.1f} | "
              f"{100 * rate / peak[best_lib]:.1f} % |")
    print(f"\nFLOPs from the {rows[0][2] if rows else 'manifest'}; provider {rows[0][5] if rows else '-'}; "
          f"median of {args.runs} runs after one warm-up")
    return 0


def main(argv: list[str] | None = None) -> int:
    from diffvos.evaluation.benchmarks import add_efficiency_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_efficiency_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
