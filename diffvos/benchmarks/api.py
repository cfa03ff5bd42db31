"""Per-frame cost of the embedding API over a bare ``Tracker.step``, and allocations per frame.

    python benchmarks/bench_api.py [--bundle DIR] [--frames 200] [--size 64x96]

Without --bundle it builds the toy bundle of the tests (tiny graph, so the API's share shows).
Prints (figures, never asserted):

* overhead: median µs of ``session_track`` minus the ``Tracker.step`` it wraps, measured inside
  the same call (so tracking-time noise cancels), and the median of ``session_track`` with the
  tracker replaced by a stub returning a fixed result (the API alone).
* allocations (tracemalloc, steady state after the memory is full): bytes retained per frame,
  and the peak of transient bytes during one frame, for the bare step, the API call, and the
  API alone (stubbed tracker).
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

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "samples" / "python")]

from diffvos.runtime import api  # noqa: E402
from diffvos.runtime.api import Status  # noqa: E402


def _allocs(call, frames) -> tuple[float, float]:
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", default="64x96", help="HxW of the synthetic frames (default 64x96)")
    p.add_argument("--memory", type=int, default=4, help="memory frames (small: steady state sooner)")
    args = p.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    from synthetic import clip

    bundle = args.bundle
    if bundle is None:
        from toy_bundle import make_toy_bundle

        bundle = make_toy_bundle(Path(tempfile.mkdtemp()) / "toy", height=h, width=w)
    frames, truths = clip(args.frames + 1, height=h, width=w)
    status, rt = api.runtime_create(bundle, api.RuntimeOptions(backend="cpu"))
    assert status == Status.OK, api.last_error()
    opts = api.SessionOptions(memory=args.memory)
    _, s = api.session_create(rt, w, h, opts)
    out = np.zeros((h, w), np.uint8)
    assert api.session_add_objects(s, frames[0], truths[0], out) == Status.OK
    tracker = s._tracker
    warm = frames[1 : args.memory + 3]
    for f in warm:
        api.session_track(s, f, out)
    steady = frames[args.memory + 3 :]

    # 1. overhead inside the same call: API time minus the wrapped Tracker.step time
    real_step = tracker.step
    inner: list[float] = []

    def timed_step(bgr):
        t0 = time.perf_counter()
        r = real_step(bgr)
        inner.append(time.perf_counter() - t0)
        return r

    tracker.step = timed_step
    overhead, totals = [], []
    for f in steady:
        t0 = time.perf_counter()
        api.session_track(s, f, out)
        total = time.perf_counter() - t0
        overhead.append(total - inner[-1])
        totals.append(total)
    tracker.step = real_step

    # 2. the API alone: the tracker stubbed with a fixed result
    fixed = real_step(steady[0])
    tracker.step = lambda bgr: fixed
    alone = []
    for f in steady:
        t0 = time.perf_counter()
        api.session_track(s, f, out)
        alone.append(time.perf_counter() - t0)
    api_only_alloc = _allocs(lambda f: api.session_track(s, f, out), steady)
    tracker.step = real_step

    # 3. allocations of the real call and of the bare step (a separate bare tracker, same state size)
    api_alloc = _allocs(lambda f: api.session_track(s, f, out), steady)
    from diffvos.runtime.features import FeatureExtractor
    from diffvos.runtime.tracker import Tracker

    bare = Tracker(FeatureExtractor(bundle, backend="cpu", quiet=True), api._config(opts))
    bare.start(frames[0], truths[0])
    for f in warm:
        bare.step(f)
    bare_times = []
    for f in steady:
        t0 = time.perf_counter()
        bare.step(f)
        bare_times.append(time.perf_counter() - t0)
    bare_alloc = _allocs(bare.step, steady)

    us = lambda xs: statistics.median(xs) * 1e6  # noqa: E731
    print(f"bundle {bundle}, frames {h}x{w}, {len(steady)} steady-state frames, memory {args.memory}")
    print(f"median Tracker.step            {us(bare_times):10.1f} µs")
    print(f"median session_track           {us(totals):10.1f} µs")
    print(f"API overhead (same call)       {us(overhead):10.1f} µs  (median of call − wrapped step)")
    print(f"API alone (stubbed tracker)    {us(alone):10.1f} µs")
    print("allocations per frame (tracemalloc):      retained B   peak transient B")
    for name, (kept, peak) in (("bare Tracker.step", bare_alloc), ("session_track", api_alloc),
                               ("API alone (stubbed tracker)", api_only_alloc)):
        print(f"  {name:30s} {kept:12.1f} {peak:16.0f}")
    api.session_destroy(s)
    api.runtime_destroy(rt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
