"""Two video streams tracked on two threads, sharing one loaded engine.

    python samples/python/two_streams.py BUNDLE [--frames 12]

One runtime (the bundle's graphs, loaded once) and one session per stream. Each thread owns
its session and its buffers: the frame goes in, the label map is written into a buffer the
caller allocated once. Prints each stream's mean IoU against the synthetic truth.
"""

from __future__ import annotations

import argparse
import sys
import threading

import numpy as np
from synthetic import clip, iou

from diffvos.runtime import api


def track_stream(runtime: api.Runtime, frames: list, first_labels: np.ndarray, results: list) -> None:
    h, w = first_labels.shape
    status, session = api.session_create(runtime, w, h)
    if status != api.Status.OK:
        raise SystemExit(f"session_create: {status.name}: {api.last_error()}")
    out = np.zeros((h, w), np.uint8)  # allocated once, filled by every call
    try:
        if api.session_add_objects(session, frames[0], first_labels, out) != api.Status.OK:
            raise SystemExit(f"add_objects: {api.session_last_error(session)}")
        results.append(out.copy())
        for frame in frames[1:]:
            if api.session_track(session, frame, out) != api.Status.OK:
                raise SystemExit(f"track: {api.session_last_error(session)}")
            results.append(out.copy())
    finally:
        api.session_destroy(session)


def run(bundle: str, frames: int = 12) -> dict[str, list[np.ndarray]]:
    """Track two synthetic streams concurrently; returns each stream's label maps."""
    status, runtime = api.runtime_create(bundle, api.RuntimeOptions(backend="auto"))
    if status != api.Status.OK:
        raise SystemExit(f"runtime_create: {status.name}: {api.last_error()}")
    _, info = api.runtime_info(runtime)
    print(f"diffvos {info.version} on {info.provider}")
    streams = {"a": clip(frames), "b": clip(frames, objects=((5, (255, 255, 255), (20, 60), (1, -3), 16, 0),))}
    results: dict[str, list[np.ndarray]] = {name: [] for name in streams}
    threads = [
        threading.Thread(target=track_stream, args=(runtime, f, t[0], results[name]), name=name)
        for name, (f, t) in streams.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    api.runtime_destroy(runtime)
    for name, (_, truths) in streams.items():
        ids = [int(i) for i in np.unique(truths[0]) if i]
        scores = [iou(out == i, truth == i) for out, truth in zip(results[name], truths) for i in ids]
        print(f"stream {name}: {len(results[name])} frames, objects {ids}, mean IoU {np.mean(scores):.3f}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--frames", type=int, default=12)
    args = p.parse_args(argv)
    run(args.bundle, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
