"""Several objects, one appearing mid-video, one removed later.

    python samples/python/add_object_midway.py BUNDLE [--frames 16]

Object 1 and 2 are given on frame 0; object 3 enters the scene at frame 6 and is added there
from its mask (the frame is tracked at the same time); object 1 is removed at frame 11. Also
reads the probabilities (float32, on the feature grid) into a caller buffer, and prints the
per-stage timings and the session's memory.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from synthetic import OBJECTS, clip, iou

from diffvos.runtime import api

NEWCOMER = (3, (255, 255, 255), (40, 0), (0, 3), 18, 6)  # enters at frame 6
ADD_AT, REMOVE_AT = 6, 11


def check(status: api.Status, session: api.Session, what: str) -> None:
    if status != api.Status.OK:
        raise SystemExit(f"{what}: {status.name}: {api.session_last_error(session)}")


def run(bundle: str, frames: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns (label map, truth) per frame."""
    frames_, truths = clip(frames, objects=OBJECTS + (NEWCOMER,))
    status, runtime = api.runtime_create(bundle)
    if status != api.Status.OK:
        raise SystemExit(f"runtime_create: {status.name}: {api.last_error()}")
    h, w = truths[0].shape
    _, session = api.session_create(runtime, w, h)
    out = np.zeros((h, w), np.uint8)
    results = []
    for t, (frame, truth) in enumerate(zip(frames_, truths)):
        if t == 0:
            check(api.session_add_objects(session, frame, np.where(truth != 3, truth, 0).astype(np.uint8), out), session, "add 1, 2")
        elif t == ADD_AT:
            check(api.session_add_objects(session, frame, np.where(truth == 3, truth, 0).astype(np.uint8), out), session, "add 3")
        else:
            if t == REMOVE_AT:
                check(api.session_remove_object(session, 1), session, "remove 1")
            _, info = api.session_info(session)
            probs = np.zeros(info.prob_shape, np.float32)  # (1 + objects, grid_h, grid_w)
            check(api.session_track(session, frame, out, probs), session, "track")
        _, info = api.session_info(session)
        scores = {i: round(iou(out == i, truth == i), 2) for i in info.object_ids}
        print(f"frame {t:2d}: objects {info.object_ids}, IoU {scores}, {info.timings['total_ms']:.1f} ms")
        results.append((out.copy(), truth))
    _, info = api.session_info(session)
    stages = ", ".join(f"{k} {v:.2f}" for k, v in info.timings.items())
    print(f"last frame: {stages}; session memory {info.memory_bytes / 1024:.0f} KiB")
    api.session_destroy(session)
    api.runtime_destroy(runtime)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--frames", type=int, default=16)
    args = p.parse_args(argv)
    run(args.bundle, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
