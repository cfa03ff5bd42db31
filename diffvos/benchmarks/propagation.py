"""One propagation step at the published setting: the propagation graph (the device step, here on
ONNX Runtime's CPU provider) against the numpy kernel, in the same process, alternating.

    diffvos bench propagation [--runs 5] [--threads 0] [--davis DIR] [--mag 12]
        [--dense] [--tiles 6,8,12,16] [--session BUNDLE]

Published setting: 60x104 features (480x832 input, stride 8), C=512, first frame + 28 memory
frames (all filled before timing), r=15, k=15, T=0.2, MAG-Filter 12 cells (the runtime default),
3 mask channels, float16 memory. Both kernels are filled with the same frames and then step
through the same query frames; the first step of each is a warm-up, the median (and CPU seconds,
``process_time``) of ``--runs`` steps is printed with the ratio numpy / graph, the soft masks'
largest difference and the label pixels that differ at 480x854. ``--davis``: real DAVIS-2016
frames through a fixed random patch projection (C channels with the images' spatial and temporal
structure; TopK's cost depends on the data), else Gaussian features. Threads follow the runtime's
policy (``--threads``, :mod:`diffvos.runtime.threads`): ONNX Runtime intra-op threads for the
graph, BLAS threads for numpy. ``--dense``: the windowed numpy kernel against the literal dense
formula (equality at a size where the dense matrix fits, time at full size); ``--tiles``: the
numpy kernel's tile sweep. ``--session BUNDLE``: instead, the whole step through ``Session.step``
with both kernels on one runtime (per-stage ms from ``Session.timings``, host<->device bytes per
frame of the graph kernel, label pixels that differ). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from diffvos.config import PropagationConfig
from diffvos.runtime.memory import l2_normalise_into
from diffvos.runtime.propagation import Propagator

OUT_HW = (480, 854)  # DAVIS frames


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MiB, from /proc."""
    vals = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM")):
                key, num, _ = line.split()
                vals[key[:-1]] = int(num) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- inputs -------------------------------------------------------------------------------------------
def davis_features(root: Path, sequence: str, n: int, channels: int, grid: tuple[int, int],
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, h, w) features and (n, 3, h, w) masks from a DAVIS-2016 sequence: each cell's 16x16
    neighbourhood (stride 8) projected by a fixed random matrix, rectified, plus a blurred copy,
    centred per channel; the object mask split into left/right halves (two objects)."""
    import cv2
    from PIL import Image

    h, w = grid
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((48, channels)).astype(np.float32) / np.sqrt(48)
    bias = (0.3 * rng.standard_normal(channels)).astype(np.float32)
    frames = sorted((root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:n]
    feats, masks = [], []
    for path in frames:
        img = cv2.resize(cv2.imread(str(path)), (w * 8, h * 8), interpolation=cv2.INTER_AREA)
        small = cv2.resize(img.astype(np.float32) / 127.5 - 1.0, (w * 2, h * 2), interpolation=cv2.INTER_AREA)
        small = np.pad(small, ((1, 1), (1, 1), (0, 0)), mode="edge")
        win = np.lib.stride_tricks.sliding_window_view(small, (4, 4), axis=(0, 1))[::2, ::2][:h, :w]
        x = np.maximum(win.reshape(h * w, 48) @ proj + bias, 0).reshape(h, w, channels)
        x = x + 0.7 * _blur(x, 2.0)  # context
        x -= x.mean(axis=(0, 1))
        feats.append(np.ascontiguousarray(np.moveaxis(x, -1, 0), np.float32))
        ann = np.asarray(Image.open(root / "Annotations" / "480p" / sequence / (path.stem + ".png")))
        obj = (ann if ann.ndim == 2 else ann[..., 0]) > 0
        obj = cv2.resize(obj.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        labels = np.where(obj, 1 + (np.arange(w)[None, :] >= w // 2), 0)
        masks.append((labels[None] == np.arange(3)[:, None, None]).astype(np.float32))
    return np.stack(feats), np.stack(masks)


def _blur(f: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (h, w, C) over h and w, edges repeated."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(f, pad, mode="edge")
        n = f.shape[axis]
        f = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return f


def random_features(n: int, channels: int, grid: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, channels, *grid)).astype(np.float32)
    soft = rng.random((n, 3, *grid)).astype(np.float32)
    return feats, soft / soft.sum(1, keepdims=True)


# --- graph vs numpy -------------------------------------------------------------------------------------
def compare_kernels(feats: np.ndarray, masks: np.ndarray, cfg: PropagationConfig, runs: int, threads: int,
                    numpy_too: bool = True) -> dict:
    """Fill both kernels with frames 0..memory, then time ``runs`` + 1 steps of each, alternating.

    Both go through ``step_to_labels``, what ``Session.step`` calls: the numpy kernel's step then
    the host label map (two stages), the graph's one run making the label map on the device. The
    graph's query is uploaded before its step (a session's feature graph leaves it there), so the
    bytes counted per step are what a session moves for propagation; the soft mask is asked for
    too (``probs``, for the comparison) and its bytes are reported apart."""
    from diffvos.runtime.device_step import GraphPropagator
    from diffvos.runtime.graph_engines import GraphEngines
    from diffvos.runtime.postprocess import LabelSpec
    from diffvos.runtime.propagation_graph import (
        GraphSpec,
        propagation_model,
        scored_pairs,
    )
    from diffvos.runtime.threads import plan_threads

    n, c, h, w = feats.shape
    plan = plan_threads(threads)
    labels_spec = LabelSpec(8, (h * 8, w * 8))
    t0 = time.perf_counter()
    graphs = GraphEngines("cpu", plan)
    io = graphs.device_io()
    spec = GraphSpec.for_config(cfg, h, w, c, labels=labels_spec)
    graph = GraphPropagator(graphs, spec, 3, io, OUT_HW)
    build_s = time.perf_counter() - t0
    ref = Propagator(c, h, w, 3, cfg) if numpy_too else None
    for p in filter(None, (graph, ref)):
        p.start(feats[0], masks[0])
        for i in range(1, cfg.memory + 1):
            p.push(feats[i], masks[i]) if p is graph else p.bank.push(feats[i], masks[i])
    queries = feats[cfg.memory + 1:][: runs + 1]
    lut = np.arange(256, dtype=np.uint8)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"graph": [], "numpy": []}
    diffs, labels, moved = [], [], []
    for q in queries:
        on_device = io.upload(q)  # where the feature graph leaves it
        soft, out = np.empty((3, h, w), np.float32), np.empty(OUT_HW, np.uint8)
        io.reset_counts()
        t, c0 = time.perf_counter(), time.process_time()
        stages = graph.step_to_labels(on_device, labels_spec, lut, out, soft)
        rows["graph"].append((time.perf_counter() - t, time.process_time() - c0, *stages))
        moved.append((io.up, io.down - soft.nbytes))
        if ref is not None:
            want, out_ref = np.empty_like(soft), np.empty_like(out)
            with plan.blas():
                t, c0 = time.perf_counter(), time.process_time()
                stages = ref.step_to_labels(q, labels_spec, lut, out_ref, want)
                rows["numpy"].append((time.perf_counter() - t, time.process_time() - c0, *stages))
            diffs.append(float(np.abs(soft - want).max()))
            labels.append(int((out != out_ref).sum()))
    flop = 2 * c * (cfg.memory + 1) * scored_pairs(spec)
    out_d = {"build_s": build_s, "flop": flop, "diffs": diffs, "labels": labels, "plan": plan, "moved": moved[1:],
             "soft_bytes": 3 * h * w * 4, "query_bytes": c * h * w * 4,
             "nodes": len(propagation_model(spec).graph.node), "bank_mib": graph.bank.nbytes / 2**20,
             "scratch_mib": graph.scratch_nbytes / 2**20}
    for kernel, values in rows.items():
        if len(values) > 1:
            wall, cpu, prop_ms, post_ms = zip(*values[1:])  # the first step warms up
            out_d[kernel] = {"median": statistics.median(wall), "min": min(wall), "max": max(wall),
                             "cpu": statistics.median(cpu), "n": len(wall), "runs": list(wall),
                             "propagate_ms": statistics.median(prop_ms), "postprocess_ms": statistics.median(post_ms)}
    return out_d


def print_comparison(result: dict, label: str) -> None:
    g, npk = result.get("graph"), result.get("numpy")
    plan = result["plan"]
    print(f"\n{label}: ONNX Runtime intra-op threads {plan.intra_op}, BLAS threads {plan.blas_threads}, spinning "
          f"{'on' if plan.spinning else 'off'}; graph ({result['nodes']} nodes) built in {result['build_s']:.2f} s; bank "
          f"{result['bank_mib']:.0f} MiB + scratch {result['scratch_mib']:.1f} MiB (device memory of the graph "
          f"kernel's state); load average {load_average()}")
    print(f"{'kernel':8s} {'median s':>9s} {'min':>7s} {'max':>7s} {'CPU s':>7s} {'GFLOP/s':>8s} "
          f"{'propagate ms':>13s} {'labels ms':>10s}  (n)")
    for name, r in (("graph", g), ("numpy", npk)):
        if r:
            print(f"{name:8s} {r['median']:9.3f} {r['min']:7.3f} {r['max']:7.3f} {r['cpu']:7.3f} "
                  f"{result['flop'] / r['median'] / 1e9:8.0f} {r['propagate_ms']:13.0f} {r['postprocess_ms']:10.0f}"
                  f"  ({r['n']})")
    if g:
        print(f"graph runs (s): {['%.3f' % v for v in g['runs']]}; the label map is made in the same run "
              f"(labels ms 0)")
        ups = sorted({u for u, _ in result["moved"]})
        downs = sorted({d for _, d in result["moved"]})
        print(f"host<->device bytes per propagation step (steady state): up {ups}, down {downs} (the uint8 "
              f"{OUT_HW[0]}x{OUT_HW[1]} label map); the soft mask asked for this comparison adds "
              f"{result['soft_bytes']} down; on the numpy kernel the feature map ({result['query_bytes']} bytes) "
              f"would come down from a GPU first")
    if g and npk:
        print(f"numpy / graph: {npk['median'] / g['median']:.2f}x wall, {npk['cpu'] / g['cpu']:.2f}x CPU; "
              f"max |graph - numpy| per step {['%.1e' % d for d in result['diffs']]}; label pixels differing "
              f"(of {OUT_HW[0] * OUT_HW[1]}) {result['labels']}")


# --- the numpy kernel against the dense formula (kept from the first version of this benchmark) -------
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


def dense_section(args: argparse.Namespace) -> None:
    c, h, w, n_ctx = 512, 60, 104, 29
    hw = h * w
    sc, sh, sw = 64, 20, 34
    for dtype in ("float32", "float16"):
        rng = np.random.default_rng(1)
        p = filled_propagator(rng, sc, sh, sw, n_ctx, PropagationConfig(feature_dtype=dtype, mag_filter="off"))
        q = rng.standard_normal((sc, sh, sw)).astype(np.float32)
        want = dense_step(p, q)
        got = p.step(q)
        print(f"check {sh}x{sw} C={sc} {n_ctx} frames, memory {dtype}: max |windowed - dense| = "
              f"{np.abs(got - want).max():.2e} (dense matrix {n_ctx * (sh * sw) ** 2 * 4 / 2**20:.0f} MiB)")
    p, t, _ = time_windowed(c, h, w, n_ctx, PropagationConfig(feature_dtype="float32"), args.runs)
    rng = np.random.default_rng(0)
    p = filled_propagator(rng, c, h, w, n_ctx, PropagationConfig(feature_dtype="float32", mag_filter="off"))
    q = rng.standard_normal((c, h, w)).astype(np.float32)
    t0 = time.perf_counter()
    want = dense_step(p, q, chunk=args.dense_chunk)
    dense_t = time.perf_counter() - t0
    print(f"full size: windowed {t:.2f} s, dense (chunks of {args.dense_chunk}) {dense_t:.2f} s, max |windowed - dense| "
          f"= {np.abs(p.step(q) - want).max():.2e}; a whole dense matrix would need {n_ctx * hw * hw * 4 / 2**30:.1f} GiB")


def main(argv: list[str] | None = None) -> None:
    from diffvos.evaluation.benchmarks import add_propagation_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_propagation_arguments(ap)
    run(ap.parse_args(argv))


# --- the whole step through Session.step, both kernels ----------------------------------------------------
SESSION_STAGES = ("preprocess_ms", "vae_ms", "features_ms", "propagate_ms", "postprocess_ms", "total_ms")


def session_stages(bundle: Path, frames: list[np.ndarray], mask: np.ndarray, threads: int) -> dict:
    """Per-stage ms (``Session.timings``) and host<->device bytes per frame of ``Session.step`` for
    each kernel, on one runtime: both sessions start on frames[0] and step alternately over
    frames[1:]; the first ``memory`` + 1 steps fill the memory and warm up, the rest are timed.
    (Not filled with copies of the first frame: copies tie exactly at the k-th candidate, where
    the kernels differ by design, which would show as label differences real video does not have.)"""
    import diffvos

    runtime = diffvos.Runtime(bundle, backend="cpu", threads=threads)
    h, w = frames[0].shape[:2]
    sessions = {k: runtime.session(w, h, propagation_kernel=k) for k in ("graph", "numpy")}
    for s in sessions.values():
        s.step(frames[0], mask=mask)
    warm = sessions["graph"].config.propagation.memory + 1
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in sessions}
    moved: list[tuple[int, int]] = []
    differ = []
    for i, f in enumerate(frames[1:]):
        out = {}
        for kernel, s in sessions.items():
            if s.device is not None:
                s.device.reset_counts()
            out[kernel] = s.step(f)
            if i >= warm:
                rows[kernel].append(dict(s.timings))
                if kernel == "graph" and s.device is not None:
                    moved.append((s.device.up, s.device.down))
        differ.append(int((out["graph"] != out["numpy"]).sum()))
    result = {"provider": runtime.provider, "frame_hw": (h, w), "moved": moved, "differ": differ,
              "n": len(rows["graph"]),
              "kinds": {k: type(s.propagator).__name__ for k, s in sessions.items()},
              "bank_mib": {k: s.propagator.bank.nbytes / 2**20 for k, s in sessions.items()}}
    for kernel, timings in rows.items():
        result[kernel] = {st: statistics.median(t.get(st, 0.0) for t in timings) for st in SESSION_STAGES}
    runtime.close()
    return result


def print_session(result: dict, label: str) -> None:
    h, w = result["frame_hw"]
    print(f"\n{label}: Session.step on {h}x{w} frames, {result['provider']}, memory full (29 context frames), "
          f"median of {result['n']} steps; load average {load_average()}")
    print(f"{'kernel':8s} " + " ".join(f"{st[:-3]:>12s}" for st in SESSION_STAGES) + "  (median ms)")
    for kernel in ("graph", "numpy"):
        r = result[kernel]
        print(f"{kernel:8s} " + " ".join(f"{r[st]:12.0f}" for st in SESSION_STAGES)
              + f"  [{result['kinds'][kernel]}, bank {result['bank_mib'][kernel]:.0f} MiB]")
    ups, downs = sorted({u for u, _ in result["moved"]}), sorted({d for _, d in result["moved"]})
    print(f"graph kernel, host<->device bytes per frame (steady state): up {ups} (the uint8 frame at the model "
          f"input size is {h * w * 3} at the frame size), down {downs} (uint8 labels: {h * w})")
    print(f"label pixels differing graph vs numpy per frame (all {len(result['differ'])} steps): {result['differ']}")


def run(args: argparse.Namespace) -> None:
    """``diffvos bench propagation``."""
    if args.session is not None:
        return run_session(args)
    h, w = (int(v) for v in args.size.split("x"))
    cfg = PropagationConfig(mag_filter=args.mag, feature_dtype=args.feature_dtype)
    n = cfg.memory + 1 + args.runs + 1
    if args.davis is not None:
        feats, masks = davis_features(args.davis, args.sequence, n, args.channels, (h, w))
        source = f"DAVIS {args.sequence} frames (fixed random patch projection)"
    else:
        feats, masks = random_features(n, args.channels, (h, w))
        source = "Gaussian features"
    print(f"{h}x{w} features, C={args.channels}, first + {cfg.memory} memory frames, r={cfg.radius}, k={cfg.topk}, "
          f"T={cfg.temperature}, MAG {cfg.mag_filter}, {cfg.feature_dtype} memory, K+1=3; {source}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; cores {os.cpu_count()}")
    for threads in args.threads:
        result = compare_kernels(feats, masks, cfg, args.runs, threads, numpy_too=not args.graph_only)
        print_comparison(result, f"--threads {threads}")
    if args.tiles:
        print("\nnumpy tile  median s/frame  (float16 memory)")
        for b in [int(x) for x in args.tiles.split(",")]:
            _, t, _ = time_windowed(args.channels, h, w, cfg.memory + 1, PropagationConfig(tile=b), max(1, args.runs - 1))
            print(f"{b:10d}  {t:8.2f}")
    if args.dense:
        dense_section(args)
    cur, hwm = rss_mb()
    print(f"process RSS now {cur:.0f} MiB, peak {hwm:.0f} MiB")


def run_session(args: argparse.Namespace) -> None:
    """``--session BUNDLE``: the whole step through ``Session.step`` on DAVIS frames (or the demo clip)."""
    from diffvos.io.frames import open_frames
    from diffvos.io.masks import read_mask

    if args.davis is not None:
        root = args.davis / "JPEGImages" / "480p" / args.sequence
        mask_path = args.davis / "Annotations" / "480p" / args.sequence / "00000.png"
    else:
        import tempfile

        from diffvos.sample_clip import make_clip

        root, mask_path = make_clip(Path(tempfile.mkdtemp()) / "clip", frames=PropagationConfig().memory + 2 + args.runs)
    count = PropagationConfig().memory + 2 + args.runs
    clip = open_frames(root)
    if len(clip) < count:
        raise SystemExit(f"bench propagation --session: {root} has {len(clip)} frames, {count} needed")
    frames = [f.bgr for f in clip.select(range(count))]
    mask = read_mask(mask_path).labels
    for threads in args.threads:
        print_session(session_stages(args.session, frames, mask, threads), f"--threads {threads}")


if __name__ == "__main__":
    main()
