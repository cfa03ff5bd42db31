"""Long-run memory check: many propagation steps, resident memory printed as it goes.

    python -m diffvos.benchmarks.memory_soak [--frames 2000] [--every 200]

Small random features (24x40, C=64, reference settings r=15, k=15, N=28) so it runs in a minute
or two; the memory bank and scratch are fixed-size, so RSS should stay flat once the FIFO is full.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffvos.config import PropagationConfig
from diffvos.runtime.propagation import Propagator


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--every", type=int, default=200)
    args = ap.parse_args()
    c, h, w = 64, 24, 40
    rng = np.random.default_rng(0)
    p = Propagator(c, h, w, 3, PropagationConfig())
    labels = rng.integers(0, 3, (h, w))
    p.start(rng.standard_normal((c, h, w)).astype(np.float32), (labels == np.arange(3)[:, None, None]).astype(np.float32))
    base = rng.standard_normal((c, h, w)).astype(np.float32)
    print(f"bank {p.bank.nbytes / 2**20:.1f} MiB, scratch {p.scratch_nbytes / 2**20:.1f} MiB, start RSS {rss_mib():.1f} MiB")
    print(f"{'frame':>6s} {'RSS MiB':>8s} {'ms/frame':>9s}")
    t0 = time.perf_counter()
    for i in range(1, args.frames + 1):
        noise = rng.standard_normal((c, h, w)).astype(np.float32)
        p.step(base + 0.5 * noise)  # correlated frames, like a video
        if i % args.every == 0:
            dt = (time.perf_counter() - t0) / args.every * 1e3
            print(f"{i:6d} {rss_mib():8.1f} {dt:9.1f}")
            t0 = time.perf_counter()


if __name__ == "__main__":
    main()
