"""``diffvos track-dataset``: every video of a dataset root, in process or on Ray; resumable.

One task per video (a video is sequential: its frames are never split). In process, one runtime
tracks the videos in turn. With Ray (:mod:`diffvos.dataset.pool`), actors holding a loaded
runtime each track one video at a time: ``num_gpus=1`` per actor where the cluster has GPUs,
one CPU per actor otherwise; a local Ray instance by default, an existing cluster by address.
Either way each video's masks appear whole with a completion marker, finished videos are skipped
on a rerun, a failed video is retried and then reported (never dropped), and a summary follows.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from diffvos.bundle import FEATURES_GRAPH, read_manifest
from diffvos.config import SessionConfig
from diffvos.dataset.layout import Video, detect
from diffvos.dataset.store import VideoStore
from diffvos.io.outputs import OutputLock, check_apart

LOCAL = "local"
MAX_ATTEMPTS = 3
# Ray on this host only, as measured: without it Ray 2.60 binds to the external interface even for
# a local instance; token authentication and usage reporting off for a private local instance.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class DatasetSummary:
    kind: str
    videos: int
    skipped: int = 0
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    where: str = "in process"
    worker_losses: int = 0

    @property
    def frames(self) -> int:
        return sum(int(r["frames"]) for r in self.done.values())

    def lines(self) -> list[str]:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.kind} dataset, {self.videos} videos: {len(self.done)} tracked, {self.skipped} already done, "
               f"{len(self.failed)} failed; {self.frames} frames in {self.seconds:.1f} s ({fps:.2f} frames/s) "
               f"{self.where}" + (f"; {self.worker_losses} video(s) re-run after a worker was lost"
                                  if self.worker_losses else "")]
        out += [f"  FAILED {name}: {why}" for name, why in sorted(self.failed.items())]
        return out


def settings_of(bundle: str | Path, config: SessionConfig, kind: str) -> dict[str, Any]:
    """What makes two runs' masks comparable: the feature graph, the session options, the layout."""
    manifest = read_manifest(bundle)
    return {"features_sha256": manifest.graphs[FEATURES_GRAPH].sha256, "session": dataclasses.asdict(config),
            "layout": kind}


def track_dataset(bundle: str | Path, root: str | Path, output: str | Path, *, config: SessionConfig | None = None,
                  backend: str = "auto", threads: int = 0, ray_address: str | None = None, workers: int | None = None,
                  force: bool = False, progress: bool = True, max_attempts: int = MAX_ATTEMPTS,
                  on_tick: Callable[[], None] | None = None, allow_failed_calibration: bool = False) -> DatasetSummary:
    """Track every video of ``root`` into ``output/<video>/``; ``ray_address``: None (in process),
    ``"local"`` (start a local Ray) or a cluster address."""
    config = config or SessionConfig()
    dataset = detect(root)
    check_apart({"--output": output}, {"--input": root, "--bundle": bundle})
    with OutputLock(output):  # one run writes into a dataset folder at a time
        from tqdm import tqdm

        store = VideoStore(output, settings_of(bundle, config, dataset.kind))
        names = [v.name for v in dataset.videos]
        store.check_contents(names)
        store.check_resumable(names, force)
        store.clean_partials()
        todo = [v for v in dataset.videos if force or not store.done(v.name)]
        summary = DatasetSummary(dataset.kind, len(names), skipped=len(names) - len(todo))
        bar = tqdm(total=len(names), initial=summary.skipped, unit="video", desc="videos", disable=not progress,
                   file=sys.stderr)
        t0 = time.perf_counter()

        def done(name: str, record: dict | None, error: str | None) -> None:
            if error is None:
                summary.done[name] = record
            else:
                summary.failed[name] = error
            bar.update(1)

        try:
            if todo and ray_address is None:
                _in_process(bundle, todo, store, config, backend, threads, max_attempts, done, allow_failed_calibration)
            elif todo:
                summary.where, summary.worker_losses = _on_ray(bundle, todo, output, store.settings, config, backend,
                                                               ray_address, workers, max_attempts, done, on_tick,
                                                               allow_failed_calibration)
        finally:
            bar.close()
            if ray_address is not None:
                store.clean_partials()  # what a lost worker left half-written (its video was run again)
        summary.seconds = time.perf_counter() - t0
        return summary


def _in_process(bundle, videos: list[Video], store: VideoStore, config, backend, threads, max_attempts, done,
                allow_failed_calibration: bool = False) -> None:
    from diffvos.dataset.track import track_one
    from diffvos.runtime.session import Runtime

    with Runtime(bundle, backend=backend, threads=threads, allow_failed_calibration=allow_failed_calibration) as runtime:
        for video in videos:
            for attempt in range(1, max_attempts + 1):
                try:
                    record = track_one(runtime, video, store, config).to_dict()
                except Exception as exc:  # noqa: BLE001 - retried, then reported with its message
                    if attempt == max_attempts:
                        done(video.name, None, f"failed {attempt} times: {type(exc).__name__}: {exc}")
                    continue
                done(video.name, record, None)
                break


def _on_ray(bundle, videos, output, settings, config, backend, address, workers, max_attempts, done,
            on_tick, allow_failed_calibration: bool = False) -> tuple[str, int]:
    import shutil
    import tempfile

    local_tmp = None
    if address == LOCAL:  # before ray is imported: it reads these at import
        for k, v in LOCAL_RAY_ENV.items():
            os.environ.setdefault(k, v)
    import ray

    from diffvos.dataset.pool import run_pool

    started = False
    if not ray.is_initialized():
        if address == LOCAL:
            # a short folder of our own (Ray's socket paths are limited to 107 characters), removed after
            local_tmp = tempfile.mkdtemp(prefix="dvray", dir="/tmp" if os.path.isdir("/tmp") else None)
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     object_store_memory=200 << 20, _temp_dir=local_tmp)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        slots = gpus if gpus else int(resources.get("CPU", 1))
        actors = max(1, min(workers or slots, slots, len(videos)))
        args = (str(Path(bundle).absolute()), backend, 1 if not gpus else 0, _options(config),
                str(Path(output).absolute()), settings, allow_failed_calibration)
        pool = run_pool(videos, args, actors=actors, gpus_per_actor=1 if gpus else 0, cpus_per_actor=0 if gpus else 1,
                        max_attempts=max_attempts, on_done=done, on_tick=on_tick)
        where = f"on Ray ({actors} actors, {'1 GPU' if gpus else '1 CPU'} each)"
        return where, pool.worker_losses
    finally:
        if started:
            ray.shutdown()
        if local_tmp:
            shutil.rmtree(local_tmp, ignore_errors=True)


def _options(config: SessionConfig) -> dict[str, Any]:
    """Session options as the flat keywords of ``SessionConfig.from_options``."""
    flat = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "propagation"}
    flat.update(dataclasses.asdict(config.propagation))
    return flat
