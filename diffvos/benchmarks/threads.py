"""Tracking time on a loaded CPU: the runtime's thread policy against the libraries' defaults.

    python -m diffvos.benchmarks.threads --bundle B [--davis ROOT] [--sequence surf] [--runs 3] [--hogs N]

B is a bundle such as ``diffvos export mobilenetv2 --output B --height 480 --width 832``. The
sequence's frames are decoded once into memory; each run tracks all of them from the first
mask through ``Session.step`` (one session per run, the runtime loaded once per configuration).
Four cases: {library defaults, diffvos.runtime.threads' choice} x {unloaded, loaded}, where
"loaded" means ``--hogs`` busy processes (default: one per available core) spin beside the run,
as other work on a shared machine would. Prints the median seconds per run, the loaded /
unloaded ratio of each configuration, and whether the two configurations' masks are identical.
Figures only: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import numpy as np

from diffvos.evaluation.benchmarks import DEFAULT_DAVIS


def _hog(stop) -> None:  # pragma: no cover - runs in a child process
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


class Hogs:
    """``n`` processes that keep a core each busy until ``stop()``."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.event = ctx.Event()
        self.procs = [ctx.Process(target=_hog, args=(self.event,), daemon=True) for _ in range(n)]

    def __enter__(self) -> Hogs:
        for p in self.procs:
            p.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.event.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()


def track_once(runtime, frames: list[np.ndarray], first: np.ndarray) -> tuple[float, list[np.ndarray]]:
    h, w = first.shape
    out = []
    with runtime.session(w, h) as session:
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            out.append(session.step(f, mask=first if i == 0 else None).copy())
        return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    import diffvos
    from diffvos.bundle import FEATURES_GRAPH, read_manifest
    from diffvos.io.frames import open_frames
    from diffvos.io.masks import read_mask
    from diffvos.runtime.ort_engine import OrtLoader
    from diffvos.runtime.threads import ThreadPlan, available_cores, plan_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--davis", default=str(DEFAULT_DAVIS))
    ap.add_argument("--sequence", default="surf")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=0, help="busy processes for 'loaded' (default: one per core)")
    ap.add_argument("--frames", type=int, default=0, help="track only the first N frames (0: all)")
    ap.add_argument("--also-threads", type=int, nargs="*", default=[], metavar="N",
                    help="also measure --threads N (ONNX Runtime and BLAS at N threads)")
    ap.add_argument("--baseline-runs", type=int, default=0,
                    help="runs per case of the library defaults (default: --runs; they are slow when loaded)")
    ap.add_argument("--skip-defaults", action="store_true", help="leave out the library defaults (slow when loaded)")
    args = ap.parse_args(argv)

    root = Path(args.davis)
    source = open_frames(root / "JPEGImages" / "480p" / args.sequence)
    frames = [f.bgr for f in source]
    frames = frames[: args.frames] if args.frames else frames
    first = read_mask(root / "Annotations" / "480p" / args.sequence / "00000.png").labels
    hogs = args.hogs or available_cores()
    bundle = Path(args.bundle)
    graph = bundle / read_manifest(bundle).graphs[FEATURES_GRAPH].file
    plans = {"library defaults": ThreadPlan.library_defaults(), "diffvos policy": plan_threads(0)}
    plans.update({f"--threads {n}": plan_threads(n) for n in args.also_threads})
    print(f"{args.sequence}: {len(frames)} frames {source.size[1]}x{source.size[0]}, bundle {bundle.name}, "
          f"{available_cores()} cores, {args.runs} runs per case, loaded = {hogs} busy processes")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if args.skip_defaults:
        del plans["library defaults"]
    times: dict[tuple[str, str], float] = {}
    masks: dict[str, list[np.ndarray]] = {}
    for name, plan in plans.items():
        runtime = diffvos.Runtime(bundle, backend="cpu", thread_plan=plan,
                                  loaders={FEATURES_GRAPH: OrtLoader(graph, backend="cpu", plan=plan)})
        track_once(runtime, frames[:3], first)  # warm-up
        count = args.baseline_runs or args.runs if name == "library defaults" else args.runs
        for load in ("unloaded", "loaded"):
            runs = []
            if load == "loaded":
                with Hogs(hogs):
                    runs = [track_once(runtime, frames, first)[0] for _ in range(count)]
            else:
                for _ in range(count):
                    secs, masks[name] = track_once(runtime, frames, first)
                    runs.append(secs)
            times[name, load] = statistics.median(runs)
            print(f"  {name:<17} {load:<9} median {times[name, load]:7.2f} s  runs "
                  + " ".join(f"{r:.2f}" for r in runs), flush=True)
        runtime.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print(f"{'configuration':<18} {'unloaded s':>10} {'loaded s':>9} {'loaded/unloaded':>16}")
    for name in plans:
        u, lo = times[name, "unloaded"], times[name, "loaded"]
        print(f"{name:<18} {u:10.2f} {lo:9.2f} {lo / u:16.2f}")
    base, pol = "library defaults", "diffvos policy"
    if base in plans:
        print(f"\npolicy vs library defaults, loaded: {times[base, 'loaded'] / times[pol, 'loaded']:.2f}x faster; "
              f"unloaded: {times[base, 'unloaded'] / times[pol, 'unloaded']:.2f}x")
    same = all(all(np.array_equal(a, b) for a, b in zip(masks[pol], m)) for m in masks.values())
    print(f"masks identical between all configurations: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
