"""Track a whole video: read frames, step one session, write masks (and an overlay) atomically.

Every check that can be made before the first frame is made before it (:meth:`TrackJob.prepare`,
before the bundle is even loaded): frames decode (all of them, once, so damaged input fails
before any output exists), the mask fits, the outputs follow the output policy
(:mod:`diffvos.io.outputs`: apart from the inputs, not overwriting anything without ``--force``,
one writer at a time, a run manifest for ``--resume``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from diffvos.config import SessionConfig
from diffvos.errors import DecodeError
from diffvos.io.frames import BadFrame, FrameSource, open_frames
from diffvos.io.masks import MaskInfo, MaskWriter, check_mask_size, read_mask
from diffvos.io.outputs import (
    OutputLock,
    RunFolder,
    RunRecord,
    check_output_file,
    fingerprint,
)
from diffvos.io.overlay import OverlayWriter
from diffvos.runtime.session import Runtime

Log = Callable[[str], None]


@dataclass
class TrackSummary:
    frames: int
    seconds: float
    provider: str
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per tracked frame (the first excluded)
    output_dir: str = ""
    overlay: str | None = None
    skipped: list[BadFrame] = field(default_factory=list)
    replayed: int = 0  # frames of an earlier run stepped again to rebuild the memory (--resume)

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        text = f"tracked {self.frames} frames in {self.seconds:.1f} s ({fps:.2f} frames/s) on {self.provider}"
        if self.replayed:
            text += f" ({self.replayed} replayed from the earlier run)"
        if self.stage_ms:
            stages = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in self.stage_ms.items() if k != "total_ms")
            text += f"; mean ms per frame: {stages}, total {self.stage_ms.get('total_ms', 0.0):.1f}"
        text += f"; masks in {self.output_dir}" + (f"; overlay {self.overlay}" if self.overlay else "")
        if self.skipped:
            shown = ", ".join(f"{b.name} ({b.reason})" for b in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f"\nskipped {len(self.skipped)} damaged frame(s), no mask written: {shown}{more}"
        return text


def mask_notes(mask: MaskInfo, frame_hw: tuple[int, int], input_hw: tuple[int, int], stride: int) -> list[str]:
    """What a user should know about a first mask before tracking: the colour -> id table of an
    RGB mask, and objects too small for the feature grid (they vanish after the first frame)."""
    notes = []
    if mask.kind == "rgb" and mask.palette is not None:
        table = ", ".join(f"({r},{g},{b}) -> {i}" for i in mask.object_ids for r, g, b in [mask.palette[i].tolist()])
        notes.append(f"mask colours read as object ids: {table}")
    cell_h = stride * frame_hw[0] / input_hw[0]  # one feature cell, in frame pixels
    cell_w = stride * frame_hw[1] / input_hw[1]
    for oid in mask.object_ids:
        ys, xs = np.nonzero(mask.labels == oid)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        if h < cell_h or w < cell_w:
            notes.append(f"warning: object {oid} spans {w}x{h} px, less than one feature cell "
                         f"({cell_w:.0f}x{cell_h:.0f} px: the bundle's stride {stride} at this frame size); "
                         f"it will likely vanish after the first frame; objects need at least about "
                         f"{2 * cell_w:.0f}x{2 * cell_h:.0f} px")
    return notes


@dataclass
class TrackJob:
    """A checked ``track`` run, ready to go: :meth:`prepare` checks, :meth:`run` tracks."""

    source: FrameSource
    mask: MaskInfo
    labels: np.ndarray
    bad: list[BadFrame]
    folder: RunFolder
    overlay: Path | None
    config: SessionConfig
    overlay_lock: OutputLock | None = None  # held from prepare() to the end of run()

    @classmethod
    def prepare(cls, input_path: str | Path, mask_path: str | Path, output_dir: str | Path, *, bundle: str | Path,
                overlay: str | Path | None = None, config: SessionConfig | None = None, resize_mask: bool = False,
                force: bool = False, resume: bool = False, skip_bad_frames: bool = False) -> TrackJob:
        from diffvos import __version__
        from diffvos.bundle import MANIFEST_NAME

        config = config or SessionConfig()
        inputs = {"frames": input_path, "mask": mask_path, "bundle": bundle}
        source = open_frames(input_path, exclude=[mask_path], skip_bad=skip_bad_frames)
        mask = read_mask(mask_path)
        labels = check_mask_size(mask, source.size, resize=resize_mask)
        if overlay is not None:
            check_output_file(overlay, "--overlay", inputs=inputs, force=force)
        record = RunRecord(
            command="track", version=__version__,
            inputs={"frames": fingerprint(input_path), "mask": fingerprint(mask_path),
                    "bundle": fingerprint(Path(bundle) / MANIFEST_NAME)},
            options={**dataclasses.asdict(config), "resize_mask": resize_mask, "skip_bad_frames": skip_bad_frames},
        )
        overlay_lock = None if overlay is None else OutputLock(overlay)
        if overlay_lock is not None:
            overlay_lock.acquire()
        folder = None
        try:
            folder = RunFolder(output_dir, record, inputs=inputs, force=force, resume=resume)  # takes its lock
            bad = source.scan()  # every frame decodes (or is listed, with skip_bad) before any output exists
            if bad and bad[0].index == 0:
                raise DecodeError(f"the first frame ({bad[0].name}) carries the mask and cannot be skipped: "
                                  f"{bad[0].reason}", input_path, 0)
        except BaseException:
            if folder is not None:
                folder.release()
            if overlay_lock is not None:
                overlay_lock.release()
            raise
        record.frames_total = len(source) + sum(b.index >= len(source) for b in bad)
        return cls(source, mask, labels, bad, folder, None if overlay is None else Path(overlay), config, overlay_lock)

    def cancel(self) -> None:
        """Release the outputs' locks of a job that will not run."""
        self.folder.release()
        if self.overlay_lock is not None:
            self.overlay_lock.release()

    def run(self, runtime: Runtime, progress: bool = True, log: Log | None = None) -> TrackSummary:
        """Track, write, and release the outputs' locks (whatever happens)."""
        log = log or (lambda _: None)
        try:
            return self._run(runtime, progress, log)
        finally:
            if self.overlay_lock is not None:
                self.overlay_lock.release()

    def _run(self, runtime: Runtime, progress: bool, log: Log) -> TrackSummary:
        from tqdm import tqdm

        source, folder = self.source, self.folder
        height, width = source.size
        if folder.mode == "resume" and folder.record.complete:
            folder.release()
            log(f"{folder.final}: the run recorded there is complete; nothing to do")
            return TrackSummary(0, 0.0, runtime.provider, output_dir=str(folder.final), skipped=self.bad)
        try:
            session = runtime.session(width, height, self.config)
            notes = mask_notes(self.mask, source.size, session.scaled, session.features.stride)
        except BaseException:
            folder.release()
            raise
        for note in notes:
            log(note)
        totals: dict[str, float] = {}
        frames = replayed = 0
        t0 = time.perf_counter()
        with folder:
            writer = MaskWriter(folder.dir, self.mask.palette)
            overlay_writer = None
            if self.overlay is not None:
                overlay_writer = OverlayWriter(folder.locate(self.overlay), source.fps, source.size,
                                               palette=self.mask.palette)
            bar = tqdm(total=len(source), unit="frame", disable=not progress, desc="tracking")
            try:
                skip = {b.index for b in self.bad}
                for frame in source:
                    if frame.index in skip:
                        continue
                    first = frames == 0
                    out = session.step(frame.bgr, mask=self.labels if first else None)
                    if not first:
                        for k, v in session.timings.items():
                            totals[k] = totals.get(k, 0.0) + v
                    if frame.index >= folder.done:
                        writer.write(frame.name, out)
                    else:
                        replayed += 1
                    if overlay_writer is not None:
                        overlay_writer.write(frame.bgr, out)
                    frames += 1
                    folder.progress(max(frame.index + 1, folder.done), [b.as_dict() for b in self.bad])
                    bar.update(1)
                bar.close()
                folder.progress(folder.record.frames_total, [b.as_dict() for b in self.bad])
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
            output_dir=str(folder.final),
            overlay=str(self.overlay) if self.overlay else None,
            skipped=self.bad,
            replayed=replayed,
        )


def track_video(
    runtime: Runtime,
    input_path: str | Path,
    mask_path: str | Path,
    output_dir: str | Path,
    overlay: str | Path | None = None,
    config: SessionConfig | None = None,
    resize_mask: bool = False,
    progress: bool = True,
    *,
    force: bool = False,
    resume: bool = False,
    skip_bad_frames: bool = False,
    log: Log | None = None,
) -> TrackSummary:
    """Track ``input_path`` from the first frame's mask with one session of ``runtime``.

    Everything is checked before anything is written (see :class:`TrackJob`); an existing
    non-empty ``output_dir`` is refused unless ``force`` (replaced whole) or ``resume``.
    """
    job = TrackJob.prepare(input_path, mask_path, output_dir, bundle=runtime.bundle, overlay=overlay, config=config,
                           resize_mask=resize_mask, force=force, resume=resume, skip_bad_frames=skip_bad_frames)
    return job.run(runtime, progress, log)
