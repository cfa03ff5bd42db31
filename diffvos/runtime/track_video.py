"""Track a whole video: read frames, run the Tracker, write masks (and an overlay) atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffvos.runtime.features import FeatureExtractor
from diffvos.runtime.propagation import PropagationConfig
from diffvos.runtime.video_io import MaskWriter, OverlayWriter, check_mask_size, open_frames, read_mask


@dataclass
class TrackSummary:
    frames: int
    seconds: float
    provider: str
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per tracked frame
    output_dir: str = ""
    overlay: str | None = None

    def line(self) -> str:
        stages = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in self.stage_ms.items() if k != "total_ms")
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (
            f"tracked {self.frames} frames in {self.seconds:.1f} s ({fps:.2f} frames/s) on {self.provider}; "
            f"mean ms per frame: {stages}, total {self.stage_ms.get('total_ms', 0.0):.1f}; masks in {self.output_dir}"
            + (f"; overlay {self.overlay}" if self.overlay else "")
        )


def track_video(
    bundle: str | Path,
    input_path: str | Path,
    mask_path: str | Path,
    output_dir: str | Path,
    overlay: str | Path | None = None,
    config: PropagationConfig | None = None,
    backend: str = "auto",
    threads: int = 0,
    seed: int = 0,
    fresh_noise: bool = False,
    resize_mask: bool = False,
    progress: bool = True,
    extractor: FeatureExtractor | None = None,
) -> TrackSummary:
    """Everything is checked before anything is written: frames, mask, bundle, output folder.

    Built on the embedding API (``runtime/api.py``), so the CLI and embedders share one path.
    """
    from tqdm import tqdm

    from diffvos.runtime import api

    source = open_frames(input_path)
    mask = read_mask(mask_path)
    labels = check_mask_size(mask, source.size, resize=resize_mask)
    extractor = extractor or FeatureExtractor(bundle, backend=backend, threads=threads, seed=seed, fresh_noise=fresh_noise)
    writer = MaskWriter(output_dir, mask.palette)
    status, runtime = api.runtime_from_extractor(extractor)
    api.raise_for_status(status)
    height, width = source.size
    options = api.SessionOptions(propagation=config or PropagationConfig(), seed=seed, fresh_noise=fresh_noise)
    status, session = api.session_create(runtime, width, height, options)
    api.raise_for_status(status)
    out = np.empty((height, width), np.uint8)
    totals: dict[str, float] = {}
    frames = 0
    t0 = time.perf_counter()
    overlay_writer = OverlayWriter(overlay, source.fps, source.size, palette=mask.palette) if overlay else None
    bar = tqdm(total=len(source), unit="frame", disable=not progress, desc="tracking")
    try:
        for frame in source:
            if frame.index == 0:
                status = api.session_add_objects(session, frame.bgr, labels, out)
            else:
                status = api.session_track(session, frame.bgr, out)
            api.raise_for_status(status, session)
            if frame.index > 0:
                for k, v in api.session_info(session)[1].timings.items():
                    totals[k] = totals.get(k, 0.0) + v
            writer.write(frame.name, out)
            if overlay_writer is not None:
                overlay_writer.write(frame.bgr, out)
            bar.update(1)
            frames += 1
        bar.close()
        if overlay_writer is not None:
            overlay_writer.close()
    except BaseException:
        bar.close()
        if overlay_writer is not None:
            overlay_writer.abort()
        raise
    finally:
        api.session_destroy(session)
    n = frames
    return TrackSummary(
        frames=n,
        seconds=time.perf_counter() - t0,
        provider=extractor.provider.active,
        stage_ms={k: v / max(n - 1, 1) for k, v in totals.items()},
        output_dir=str(output_dir),
        overlay=str(overlay) if overlay else None,
    )
