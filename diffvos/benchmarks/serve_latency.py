"""Server latency against the in-process figure, on the same bundle and frames.

    python -m diffvos.benchmarks.serve_latency [--bundle DIR] [--streams 1 4] [--frames 60] [--protocol grpc]

In process: ``Session.step`` per frame (1 stream) and ``Runtime.step_many`` per round of frames
(N streams: every stream's frame waits for the round). Served: ``diffvos serve``'s server
(the stock tritonserver on a temporary repository) on 127.0.0.1, N client threads, one stream
each, one request per frame: latency = the client's round trip. The first ``--warmup`` frames of
each stream are dropped. Client and server share this machine's cores, so served figures carry
the client's cost too. Prints p50/p99 in ms, requests/s and the server's mean batch (from its
Prometheus metrics); nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def _percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _clips(n: int, frames: int, h: int, w: int):
    from diffvos.sample_clip import SQUARES, moving_squares

    return [moving_squares(frames, h, w, objects=tuple((o, c, (y + k, x + 2 * k), d, s, st)
                                                      for o, c, (y, x), d, s, st in SQUARES)) for k in range(n)]


def in_process(bundle, streams: int, frames: int, warmup: int, size, threads: int) -> dict:
    import diffvos

    with diffvos.Runtime(bundle, backend="cpu", threads=threads) as rt:
        h, w = size
        clips = _clips(streams, frames, h, w)
        sessions = [rt.session(w, h, seed=k) for k in range(streams)]
        lat = []
        t0 = None
        for t in range(frames):
            start = time.perf_counter()
            if t == warmup:
                t0 = start
            if streams == 1:
                sessions[0].step(clips[0][0][t], mask=clips[0][1][0] if t == 0 else None)
            else:
                rt.step_many([(s, clips[k][0][t], clips[k][1][0] if t == 0 else None) for k, s in enumerate(sessions)])
            if t >= warmup:
                lat += [(time.perf_counter() - start) * 1e3] * streams
        seconds = time.perf_counter() - t0
    p50, p99 = _percentiles(lat)
    return {"where": "in process", "streams": streams, "p50": p50, "p99": p99, "rps": len(lat) / seconds, "batch": None}


def _metric(host: str, port: int, family: str) -> float:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(family + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def served(server, bundle, streams: int, frames: int, warmup: int, size, protocol: str) -> dict:
    from diffvos.serve.client import StreamClient

    h, w = size
    clips = _clips(streams, frames, h, w)
    url = server.grpc_url if protocol == "grpc" else server.url
    lat: list[list[float]] = [[] for _ in range(streams)]
    marks: list[float] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(streams)

    def run(k: int) -> None:
        try:
            c = StreamClient(url, f"bench-{streams}-{k}", protocol)
            barrier.wait()
            for t in range(frames):
                start = time.perf_counter()
                if t == warmup:
                    marks.append(start)
                c.step(clips[k][0][t], mask=clips[k][1][0] if t == 0 else None, end=t == frames - 1)
                if t >= warmup:
                    lat[k].append((time.perf_counter() - start) * 1e3)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    execs0 = _metric(server.host, server.ports.metrics, "nv_inference_exec_count")
    count0 = _metric(server.host, server.ports.metrics, "nv_inference_count")
    threads = [threading.Thread(target=run, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    if errors:
        raise errors[0]
    execs = _metric(server.host, server.ports.metrics, "nv_inference_exec_count") - execs0
    count = _metric(server.host, server.ports.metrics, "nv_inference_count") - count0
    flat = [x for row in lat for x in row]
    p50, p99 = _percentiles(flat)
    return {"where": f"server ({protocol})", "streams": streams, "p50": p50, "p99": p99,
            "rps": len(flat) / (end - min(marks)), "batch": count / execs if execs else None}


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="diffvos-latency-"))
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path) -> int:
    from diffvos.export.toy import make_toy_bundle
    from diffvos.runtime.session import Runtime
    from diffvos.serve.repository import ServeOptions, export_triton
    from diffvos.serve.server import TritonServer

    bundle = args.bundle or make_toy_bundle(tmp / "toy", height=64, width=96, ensemble=1)
    with Runtime(bundle, backend="cpu") as rt:
        m = rt.manifest
        size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else \
            ((m.height, m.width) if not m.dynamic else (64, 96))
    print(f"bundle {bundle} ({m.backbone}, up to {m.streams.max_streams} streams per call), frames {size[0]}x{size[1]}, "
          f"{args.frames} frames per stream ({args.warmup} warm-up dropped); load average {os.getloadavg()[0]:.2f}")
    rows = [in_process(bundle, n, args.frames, args.warmup, size, args.threads) for n in args.streams]
    repo = tmp / "repository"
    export_triton(bundle, repo, ServeOptions(max_streams=max(args.streams) + 1, max_batch=max(max(args.streams), 1),
                                             queue_delay_us=args.queue_delay_us, backend="cpu", threads=args.threads),
                  link_bundle=True)
    with TritonServer(repo, exit_timeout_s=1) as server:
        for n in args.streams:
            rows.append(served(server, bundle, n, args.frames, args.warmup, size, args.protocol))
    print(f"{'where':<16} {'streams':>7} {'p50 ms':>8} {'p99 ms':>8} {'frames/s':>9} {'mean batch':>10}")
    for r in rows:
        batch = f"{r['batch']:.2f}" if r["batch"] else "-"
        print(f"{r['where']:<16} {r['streams']:>7} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['rps']:>9.1f} {batch:>10}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="bundle directory (default: a toy bundle)")
    p.add_argument("--streams", nargs="+", type=int, default=[1, 4])
    p.add_argument("--frames", type=int, default=60, help="frames per stream (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="first frames of each stream not counted (default 5)")
    p.add_argument("--size", help="HxW of the frames (default: the bundle's size)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--queue-delay-us", type=int, default=1000, help="the batcher's wait for more streams")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads in both settings (default: its own)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
