"""Two video streams tracked on two threads, sharing one loaded engine.

    python samples/python/two_streams.py BUNDLE [--frames 12]

One runtime (the bundle's graphs, loaded once) and one session per stream. Each thread owns
its session and its buffer: the frame goes in, the label map is written into a buffer the
caller allocated once. Prints each stream's mean IoU against the synthetic truth.
"""

from __future__ import annotations

import argparse
import sys
import threading

import numpy as np

import diffvos
from diffvos.evaluation.davis import mean_object_iou
from diffvos.sample_clip import moving_squares


def track_stream(runtime: diffvos.Runtime, frames: list, first_labels: np.ndarray, results: list) -> None:
    h, w = first_labels.shape
    out = np.zeros((h, w), np.uint8)  # allocated once, filled by every step
    with runtime.session(w, h) as session:
        for i, frame in enumerate(frames):
            session.step(frame, out, mask=first_labels if i == 0 else None)
            results.append(out.copy())


def run(bundle: str, frames: int = 12) -> dict[str, list[np.ndarray]]:
    """Track two synthetic streams concurrently; returns each stream's label maps."""
    runtime = diffvos.Runtime(bundle)
    print(f"diffvos {runtime.info.version} on {runtime.provider}")
    streams = {"a": moving_squares(frames),
               "b": moving_squares(frames, objects=((5, (255, 255, 255), (20, 60), (1, -3), 16, 0),))}
    results: dict[str, list[np.ndarray]] = {name: [] for name in streams}
    threads = [
        threading.Thread(target=track_stream, args=(runtime, f, t[0], results[name]), name=name)
        for name, (f, t) in streams.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runtime.close()
    for name, (_, truths) in streams.items():
        ids = [int(i) for i in np.unique(truths[0]) if i]
        scores = [mean_object_iou(truth, out, ids) for out, truth in zip(results[name], truths)]
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
