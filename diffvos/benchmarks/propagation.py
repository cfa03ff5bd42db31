"""One propagation step at the reference size: windowed kernel vs the dense formula.

    python -m diffvos.benchmarks.propagation [--runs 3] [--tiles 6,8,12,16] [--no-dense]

Reference size: 60x104 features (480x832 input, stride 8), C=512, 29 context frames
(first + 28), r=15, k=15, 3 mask channels. The dense reference builds the (N*hw) x hw affinity of
METHOD.md section 2 literally, in float32; at full size that matrix is 4.5 GB, so it is computed
in column chunks of queries (each chunk is a dense (N*hw) x chunk block). Equality of the two is
checked at a smaller size where the whole dense matrix fits. Figures are printed, never asserted.

On a shared, busy CPU run it with OPENBLAS_NUM_THREADS=1: multithreaded OpenBLAS spinning against
other processes made a step 5-10x slower in our measurements.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

import numpy as np

from diffvos.config import PropagationConfig
from diffvos.runtime.memory import l2_normalise_into
from diffvos.runtime.propagation import Propagator


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MiB, from /proc."""
    vals = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM")):
                key, num, _ = line.split()
                vals[key[:-1]] = int(num) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def filled_propagator(rng, c, h, w, n_ctx, cfg) -> Propagator:
    """A propagator whose memory already holds n_ctx frames (filled directly, no propagation)."""
    p = Propagator(c, h, w, 3, cfg)
    labels = rng.integers(0, 3, (h, w))
    p.start(rng.standard_normal((c, h, w)).astype(np.float32), (labels == np.arange(3)[:, None, None]).astype(np.float32))
    for _ in range(n_ctx - 1):
        soft = rng.random((3, h, w)).astype(np.float32)
        p.bank.push(rng.standard_normal((c, h, w)).astype(np.float32), soft / soft.sum(0))
    return p


def dense_step(p: Propagator, query: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """METHOD.md steps 1-6 literally: dense affinity, window mask, top-k (ties kept), normalise."""
    cfg, h, w = p.config, p.h, p.w
    hw = h * w
    slots = p.bank.context_slots()
    keys = p.bank.features[slots].reshape(-1, p.channels).astype(np.float32)  # (N*hw, C)
    masks = p.bank.masks[slots].reshape(-1, p.bank.num_classes)  # (N*hw, K+1)
    q = np.empty((h, w, p.channels), np.float32)
    l2_normalise_into(query, q)
    q = q.reshape(hw, -1)
    yy, xx = np.divmod(np.arange(hw), w)
    out = np.empty((hw, masks.shape[1]), np.float32)
    chunk = chunk or hw
    for s in range(0, hw, chunk):
        e = min(hw, s + chunk)
        aff = np.exp((keys @ q[s:e].T) / np.float32(cfg.temperature))  # (N*hw, chunk)
        if cfg.radius > 0:
            win = (np.abs(yy[:, None] - yy[None, s:e]) <= cfg.radius) & (np.abs(xx[:, None] - xx[None, s:e]) <= cfg.radius)
            aff *= np.tile(win, (len(slots), 1))
        kth = np.partition(aff, aff.shape[0] - cfg.topk, axis=0)[aff.shape[0] - cfg.topk]
        aff[aff < kth] = 0
        aff /= aff.sum(axis=0, keepdims=True)
        out[s:e] = (masks.T @ aff).T
    return out.T.reshape(-1, h, w)


def time_windowed(c, h, w, n_ctx, cfg, runs, seed=0):
    rng = np.random.default_rng(seed)
    p = filled_propagator(rng, c, h, w, n_ctx, cfg)
    queries = [rng.standard_normal((c, h, w)).astype(np.float32) for _ in range(runs)]
    times, peaks = [], []
    for q in queries:
        gc.collect()
        tracemalloc.start()
        t0 = time.perf_counter()
        p.step(q)
        times.append(time.perf_counter() - t0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return p, statistics.median(times), max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tiles", default="", help="comma-separated tile sides to sweep (e.g. 6,8,12,16)")
    ap.add_argument("--no-dense", action="store_true", help="skip the full-size dense reference")
    ap.add_argument("--dense-chunk", type=int, default=520, help="queries per dense chunk at full size")
    args = ap.parse_args()
    c, h, w, n_ctx = 512, 60, 104, 29
    hw = h * w
    print(f"size: {h}x{w} features, C={c}, {n_ctx} context frames, r=15, k=15; "
          f"dense affinity {n_ctx * hw * hw * 4 / 2**30:.2f} GiB float32")

    # 1. equality at a size where the dense matrix fits whole
    sc, sh, sw = 64, 20, 34
    for dtype in ("float32", "float16"):
        rng = np.random.default_rng(1)
        p = filled_propagator(rng, sc, sh, sw, n_ctx, PropagationConfig(feature_dtype=dtype, mag_filter="off"))
        q = rng.standard_normal((sc, sh, sw)).astype(np.float32)
        want = dense_step(p, q)
        got = p.step(q)
        print(f"check {sh}x{sw} C={sc} {n_ctx} frames, memory {dtype}: max |windowed - dense| = "
              f"{np.abs(got - want).max():.2e} (dense matrix {n_ctx * (sh * sw) ** 2 * 4 / 2**20:.0f} MiB)")

    # 2. tile sweep
    if args.tiles:
        print("\ntile  median s/frame  (float16 memory)")
        for b in [int(x) for x in args.tiles.split(",")]:
            _, t, _ = time_windowed(c, h, w, n_ctx, PropagationConfig(tile=b), max(1, args.runs - 1))
            print(f"{b:4d}  {t:8.2f}")

    # 3. full size
    rows = []
    for dtype in ("float16", "float32"):
        p, t, peak = time_windowed(c, h, w, n_ctx, PropagationConfig(feature_dtype=dtype), args.runs)
        rows.append((f"windowed, memory {dtype}", t, peak, p.bank.nbytes, p.scratch_nbytes))
    if not args.no_dense:
        rng = np.random.default_rng(0)
        p = filled_propagator(rng, c, h, w, n_ctx, PropagationConfig(feature_dtype="float32", mag_filter="off"))
        q = rng.standard_normal((c, h, w)).astype(np.float32)
        gc.collect()
        tracemalloc.start()
        t0 = time.perf_counter()
        want = dense_step(p, q, chunk=args.dense_chunk)
        t = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        got = p.step(q)
        rows.append((f"dense, chunks of {args.dense_chunk} queries", t, peak, p.bank.nbytes, 0))
        print(f"full size: max |windowed - dense| = {np.abs(got - want).max():.2e}")
    print(f"\n{'method':34s} {'s/frame':>8s} {'peak traced MiB':>16s} {'bank MiB':>9s} {'scratch MiB':>12s}")
    for name, t, peak, bank, scratch in rows:
        print(f"{name:34s} {t:8.2f} {peak / 2**20:16.1f} {bank / 2**20:9.1f} {scratch / 2**20:12.1f}")
    if not args.no_dense:
        print(f"dense / windowed (float32 memory) time ratio: {rows[2][1] / rows[1][1]:.1f}x; "
              f"a whole dense matrix would need {n_ctx * hw * hw * 4 / 2**30:.1f} GiB")
    cur, hwm = rss_mb()
    print(f"process RSS now {cur:.0f} MiB, peak {hwm:.0f} MiB")


if __name__ == "__main__":
    main()
