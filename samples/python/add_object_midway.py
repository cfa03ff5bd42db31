"""Several objects, one appearing mid-video, one removed later.

    python samples/python/add_object_midway.py BUNDLE [--frames 16]

Objects 1 and 2 are given on frame 0; object 3 enters the scene at frame 6 and is added there
from its mask (the frame is tracked at the same time); object 1 is removed at frame 11. Also
reads the probabilities (float32, on the feature grid) into a caller buffer, and prints the
per-stage timings and the session's memory.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import diffvos
from diffvos.evaluation.davis import jaccard
from diffvos.sample_clip import SQUARES, moving_squares

NEWCOMER = (3, (255, 255, 255), (40, 0), (0, 3), 18, 6)  # enters at frame 6
ADD_AT, REMOVE_AT = 6, 11


def run(bundle: str, frames: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns (label map, truth) per frame."""
    clip, truths = moving_squares(frames, objects=SQUARES + (NEWCOMER,))
    runtime = diffvos.Runtime(bundle)
    h, w = truths[0].shape
    session = runtime.session(w, h)
    out = np.zeros((h, w), np.uint8)
    results = []
    for t, (frame, truth) in enumerate(zip(clip, truths)):
        if t == 0:
            session.step(frame, out, mask=truth, object_ids=[1, 2])
        elif t == ADD_AT:
            session.step(frame, out, mask=truth, object_ids=[3])
        else:
            if t == REMOVE_AT:
                session.remove(1)
            probs = np.zeros(session.info.prob_shape, np.float32)  # (1 + objects, grid_h, grid_w)
            session.step(frame, out, probs=probs)
        info = session.info
        scores = {i: round(jaccard(out == i, truth == i), 2) for i in info.object_ids}
        print(f"frame {t:2d}: objects {info.object_ids}, IoU {scores}, {info.timings['total_ms']:.1f} ms")
        results.append((out.copy(), truth))
    info = session.info
    stages = ", ".join(f"{k} {v:.2f}" for k, v in info.timings.items())
    print(f"last frame: {stages}; session memory {info.memory_bytes / 1024:.0f} KiB")
    session.close()
    runtime.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--frames", type=int, default=16)
    args = p.parse_args(argv)
    try:
        run(args.bundle, args.frames)
    except diffvos.DiffvosError as exc:
        raise SystemExit(f"add_object_midway: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
