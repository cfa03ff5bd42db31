"""Many streams on one runtime: frames/s summed over 1, 2, 4, 8 streams, batched vs one by one.

    diffvos bench streams [--bundle DIR ...] [--streams 1 2 4 8] [--frames 6] [--repeats 3]
    python -m diffvos.benchmarks.streams ...

Without --bundle it builds the toy bundle (its graph is tiny, so the per-call overhead that
batching removes dominates). For each bundle and stream count, the same sessions step the same
synthetic clip (each stream its own seed) once per frame with ``Session.step`` for every stream
("one by one") and once with ``Runtime.step_many`` ("batched"); the two modes alternate,
``--repeats`` times, and the median wall time of each gives summed frames/s and the ratio. Both
modes produce the same masks (checked here on every frame, and by tests/test_batch.py). Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _clip(n: int, h: int, w: int, k: int):
    from diffvos.sample_clip import SQUARES, moving_squares

    objs = tuple((oid, c, (y + k % 7, x + 3 * (k % 5)), d, size, start) for oid, c, (y, x), d, size, start in SQUARES)
    return moving_squares(n, h, w, objects=objs)


def measure(bundle: str | Path, streams: list[int], frames: int, repeats: int, size: tuple[int, int] | None,
            threads: int = 0, memory: int = 4) -> list[dict]:
    """One row per stream count: median seconds and summed frames/s of both modes."""
    import diffvos

    rows = []
    with diffvos.Runtime(bundle, backend="cpu", threads=threads) as rt:
        m = rt.manifest
        h, w = size or ((m.height, m.width) if not m.dynamic else (64, 96))
        for n in streams:
            clips = [_clip(frames * repeats * 2 + 1, h, w, k) for k in range(n)]
            modes = {"one by one": [rt.session(w, h, seed=k, memory=memory) for k in range(n)],
                     "batched": [rt.session(w, h, seed=k, memory=memory) for k in range(n)]}
            for sessions in modes.values():
                for k, s in enumerate(sessions):
                    s.step(clips[k][0][0], mask=clips[k][1][0])
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            t = 1
            last: list[np.ndarray] = []  # the one-by-one masks of the same frames (that mode runs first)
            for _ in range(repeats):
                for mode, sessions in modes.items():
                    start = time.perf_counter()
                    outs = []
                    for f in range(t, t + frames):
                        if mode == "batched":
                            outs.append(rt.step_many([(s, clips[k][0][f]) for k, s in enumerate(sessions)]))
                        else:
                            outs.append([s.step(clips[k][0][f]) for k, s in enumerate(sessions)])
                    times[mode].append(time.perf_counter() - start)
                    if mode == "batched":
                        same = all(np.array_equal(a, b) for a, b in zip(outs[-1], last))
                        if not same:
                            raise AssertionError(f"{n} streams: batched masks differ from one by one")
                    else:
                        last = [o.copy() for o in outs[-1]]
                t += frames
            row = {"bundle": Path(bundle).name, "size": f"{h}x{w}", "streams": n}
            for mode in modes:
                sec = statistics.median(times[mode])
                row[mode] = n * frames / sec
            row["ratio"] = row["batched"] / row["one by one"]
            rows.append(row)
            for sessions in modes.values():
                for s in sessions:
                    s.close()
    return rows


def run(args: argparse.Namespace) -> int:
    from diffvos.export.toy import make_toy_bundle

    bundles = args.bundle or [make_toy_bundle(Path(tempfile.mkdtemp(prefix="diffvos-streams-")) / "toy",
                                              height=64, width=96, ensemble=1)]
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} (1 min) at start; {os.cpu_count()} CPUs; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'bundle':<24} {'frames':>9} {'streams':>7} {'one by one f/s':>15} {'batched f/s':>12} {'ratio':>6}")
    for bundle in bundles:
        for row in measure(bundle, args.streams, args.frames, args.repeats, size, args.threads, args.memory):
            print(f"{row['bundle']:<24} {row['size']:>9} {row['streams']:>7} {row['one by one']:>15.1f} "
                  f"{row['batched']:>12.1f} {row['ratio']:>6.2f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    return 0


def main(argv: list[str] | None = None) -> int:
    from diffvos.evaluation.benchmarks import add_streams_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_streams_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
