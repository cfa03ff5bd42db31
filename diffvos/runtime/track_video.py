"""Track a whole video: read frames, step one session, write masks (and an overlay) atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from diffvos.config import SessionConfig
from diffvos.io.frames import open_frames
from diffvos.io.masks import MaskWriter, check_mask_size, read_mask
from diffvos.io.overlay import OverlayWriter
from diffvos.runtime.session import Runtime


@dataclass
class TrackSummary:
    frames: int
    seconds: float
    provider: str
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per tracked frame (the first excluded)
    output_dir: str = ""
    overlay: str | None = None

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        text = f"tracked {self.frames} frames in {self.seconds:.1f} s ({fps:.2f} frames/s) on {self.provider}"
        if self.stage_ms:
            stages = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in self.stage_ms.items() if k != "total_ms")
            text += f"; mean ms per frame: {stages}, total {self.stage_ms.get('total_ms', 0.0):.1f}"
        return text + f"; masks in {self.output_dir}" + (f"; overlay {self.overlay}" if self.overlay else "")


def track_video(
    runtime: Runtime,
    input_path: str | Path,
    mask_path: str | Path,
    output_dir: str | Path,
    overlay: str | Path | None = None,
    config: SessionConfig | None = None,
    resize_mask: bool = False,
    progress: bool = True,
) -> TrackSummary:
    """Track ``input_path`` from the first frame's mask with one session of ``runtime``.

    Everything is checked before anything is written: frames, mask, output folder.
    """
    from tqdm import tqdm

    source = open_frames(input_path)
    mask = read_mask(mask_path)
    labels = check_mask_size(mask, source.size, resize=resize_mask)
    writer = MaskWriter(output_dir, mask.palette)
    height, width = source.size
    session = runtime.session(width, height, config)
    totals: dict[str, float] = {}
    frames = 0
    t0 = time.perf_counter()
    overlay_writer = OverlayWriter(overlay, source.fps, source.size, palette=mask.palette) if overlay else None
    bar = tqdm(total=len(source), unit="frame", disable=not progress, desc="tracking")
    try:
        for frame in source:
            out = session.step(frame.bgr, mask=labels if frame.index == 0 else None)
            if frame.index > 0:
                for k, v in session.timings.items():
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
        session.close()
    return TrackSummary(
        frames=frames,
        seconds=time.perf_counter() - t0,
        provider=runtime.provider,
        stage_ms={k: v / (frames - 1) for k, v in totals.items()} if frames > 1 else {},
        output_dir=str(output_dir),
        overlay=str(overlay) if overlay else None,
    )
