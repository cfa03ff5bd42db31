"""The engine side of a frame on every backend that starts here: per-stage ms, bytes between host
and device, device memory.

    python -m diffvos.benchmarks.engines [--bundle DIR] [--backends cpu cuda tensorrt trt] [--frames 10]

Without --bundle it builds the toy bundle. For each backend: the provider that really runs (and
why not the one asked for), the load time (a TensorRT engine is built there, or at the first
frame), the median over ``--frames`` of preprocessing, VAE and feature-graph ms (the stages of
:class:`~diffvos.runtime.features.Features`, the same code a session runs), the bytes each frame
moves between host and device (every graph input up and every output down on a GPU provider:
measured through the engines' observer hook, 0 on the CPU), and device memory: what the native
TensorRT engine holds (its context and buffers), or for ONNX Runtime, which reports none, the
whole device's use before and after (cudaMemGetInfo, when cuda-python sees a GPU). The CPU row is
the baseline of the ratio column. Figures are printed, never asserted. The propagation step's
figures come from the propagation/step benchmarks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffvos.config import BACKENDS, ORT_PROVIDERS

STAGES = ("preprocess_ms", "vae_ms", "features_ms")


def _device_used() -> int | None:
    """Bytes in use on device 0 (all processes), None without a visible GPU."""
    try:
        from diffvos.runtime.cuda_device import CudaError, shared_cuda

        free, total = shared_cuda().memory_info()
    except (CudaError, ImportError):
        return None
    return total - free


def measure(bundle: Path, backend: str, frames: list[np.ndarray], threads: int = 0) -> dict[str, Any]:
    """One backend's figures (``error`` instead when it cannot load here)."""
    from diffvos.errors import DiffvosError
    from diffvos.runtime.features import Features
    from diffvos.runtime.session import Runtime

    before = _device_used()
    t0 = time.perf_counter()
    try:
        runtime = Runtime(bundle, backend=backend, threads=threads)
    except DiffvosError as exc:
        return {"backend": backend, "error": str(exc)}
    load_s = time.perf_counter() - t0
    features = Features(runtime.manifest, runtime.engines)
    engines = [e for e in (features.engine, features.vae) if e is not None]
    on_device = {id(e): e.provider != ORT_PROVIDERS["cpu"] for e in engines}
    moved = {"up": 0, "down": 0}

    def count(engine):
        def observer(feed, outputs):
            if on_device[id(engine)]:
                moved["up"] += sum(np.asarray(v).nbytes for v in feed.values())
                moved["down"] += sum(np.asarray(v).nbytes for v in outputs.values())
        return observer

    import contextlib

    rows: dict[str, list[float]] = {s: [] for s in STAGES}
    with contextlib.ExitStack() as stack:
        for e in engines:
            stack.enter_context(e.observe(count(e)))
        t1 = time.perf_counter()
        features(frames[0])  # first frame: a dynamic TensorRT engine is built here
        first_s = time.perf_counter() - t1
        moved.update(up=0, down=0)
        for frame in frames[1:]:
            features(frame)
            for s in STAGES:
                rows[s].append(features.timings.get(s, 0.0))
    n = max(len(frames) - 1, 1)
    after = _device_used()
    own = [e.device_memory_bytes for e in engines if getattr(e, "device_memory_bytes", None) is not None]
    result = {
        "backend": backend, "provider": runtime.provider, "notes": runtime.notes, "load_s": load_s, "first_s": first_s,
        **{s: statistics.median(v) if v else 0.0 for s, v in rows.items()},
        "up_bytes": moved["up"] / n, "down_bytes": moved["down"] / n,
        "engine_device_bytes": sum(own) if own and any(own) else None,
        "device_used_delta": (after - before) if before is not None and after is not None else None,
    }
    features.close()
    runtime.close()
    return result


def _mb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def format_table(results: list[dict[str, Any]]) -> str:
    base = next((r["features_ms"] for r in results if r.get("backend") == "cpu" and "error" not in r), None)
    head = (f"{'backend':9s} {'provider':27s} {'load s':>7s} {'1st s':>6s} {'prep ms':>8s} {'vae ms':>7s} "
            f"{'feat ms':>8s} {'vs cpu':>7s} {'up MiB':>7s} {'down MiB':>8s} {'engine MiB':>10s} {'device Δ MiB':>12s}")
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['backend']:9s} does not load here: {r['error']}")
            continue
        ratio = f"{base / r['features_ms']:.2f}x" if base and r["features_ms"] else "-"
        lines.append(f"{r['backend']:9s} {r['provider'][:27]:27s} {r['load_s']:7.2f} {r['first_s']:6.2f} "
                     f"{r['preprocess_ms']:8.2f} {r['vae_ms']:7.2f} {r['features_ms']:8.2f} {ratio:>7s} "
                     f"{_mb(r['up_bytes']):>7s} {_mb(r['down_bytes']):>8s} {_mb(r['engine_device_bytes']):>10s} "
                     f"{_mb(r['device_used_delta']):>12s}")
        lines += [f"          {note}" for note in r["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from diffvos.export.toy import make_toy_bundle
    from diffvos.sample_clip import moving_squares

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="bundle directory (default: the toy bundle at --size)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS[1:], default=["cpu", "cuda", "tensorrt", "trt"])
    p.add_argument("--frames", type=int, default=10, help="frames per backend, the first untimed (default 10)")
    p.add_argument("--size", default="480x832", help="HxW of the synthetic frames (default 480x832)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime CPU threads (0: its default)")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    bundle = Path(args.bundle) if args.bundle else make_toy_bundle(Path(tempfile.mkdtemp()) / "toy", height=h, width=w)
    frames, _ = moving_squares(max(args.frames, 2), height=h, width=w)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = [measure(bundle, b, frames, args.threads) for b in args.backends]
    print(f"bundle {bundle}, frames {h}x{w}, {len(frames) - 1} timed per backend (median), load average "
          f"{' '.join(f'{x:.1f}' for x in load) if load else 'n/a'}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
