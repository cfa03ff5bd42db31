"""Per-frame cost of ``Session.step`` beyond its stages, and its allocations per frame.

    python -m diffvos.benchmarks.session [--bundle DIR] [--frames 200] [--size 64x96]

Without --bundle it builds the toy bundle (a tiny graph, so the step's own share shows).
Prints (figures, never asserted):

* overhead: median µs of a step minus the sum of its timed stages (features, propagation,
  postprocessing), measured inside the same call, so tracking-time noise cancels;
* allocations (tracemalloc, steady state after the memory is full): bytes retained per frame
  and the peak of transient bytes during one frame, for a BGR and an RGB session (the RGB
  frame is flipped once, inside preprocessing, into the model input: no extra frame copy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def allocations(call, frames) -> tuple[float, float]:
    """(retained bytes per frame, median peak transient bytes per frame)."""
    tracemalloc.start()
    peaks = np.zeros(len(frames))  # preallocated: the measurement itself retains nothing
    start = tracemalloc.get_traced_memory()[0]
    for i, f in enumerate(frames):
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        call(f)
        peaks[i] = tracemalloc.get_traced_memory()[1] - before
    retained = (tracemalloc.get_traced_memory()[0] - start) / len(frames)
    tracemalloc.stop()
    return retained, float(np.median(peaks))


def main(argv: list[str] | None = None) -> int:
    from diffvos.export.toy import make_toy_bundle
    from diffvos.runtime.session import Runtime
    from diffvos.sample_clip import moving_squares

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", default="64x96", help="HxW of the synthetic frames (default 64x96)")
    p.add_argument("--memory", type=int, default=4, help="memory frames (small: steady state sooner)")
    args = p.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    bundle = args.bundle or make_toy_bundle(Path(tempfile.mkdtemp()) / "toy", height=h, width=w)
    frames, truths = moving_squares(args.frames + 1, height=h, width=w)
    runtime = Runtime(bundle, backend="cpu")
    out = np.zeros((h, w), np.uint8)
    stages = ("preprocess_ms", "vae_ms", "features_ms", "propagate_ms", "postprocess_ms")
    rows = []
    for color in ("BGR", "RGB"):
        session = runtime.session(w, h, color=color, memory=args.memory)
        clip = frames if color == "BGR" else [np.ascontiguousarray(f[:, :, ::-1]) for f in frames]
        session.step(clip[0], out, mask=truths[0])
        for f in clip[1 : args.memory + 3]:
            session.step(f, out)
        steady = clip[args.memory + 3 :]
        totals, overhead = [], []
        for f in steady:
            t0 = time.perf_counter()
            session.step(f, out)
            total = time.perf_counter() - t0
            totals.append(total)
            overhead.append(total - sum(session.timings[s] for s in stages) / 1e3)
        rows.append((color, totals, overhead, allocations(lambda f: session.step(f, out), steady)))
        session.close()
    us = lambda xs: statistics.median(xs) * 1e6  # noqa: E731
    print(f"bundle {bundle}, frames {h}x{w}, {len(frames) - args.memory - 3} steady-state frames, memory {args.memory}")
    print(f"{'session':8s} {'step µs':>10s} {'outside stages µs':>18s} {'retained B/frame':>17s} {'peak transient B':>17s}")
    for color, totals, overhead, (kept, peak) in rows:
        print(f"{color:8s} {us(totals):10.1f} {us(overhead):18.1f} {kept:17.1f} {peak:17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
