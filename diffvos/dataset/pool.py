"""Videos on a Ray cluster: one actor per worker slot holds a loaded runtime; the driver hands
out one video at a time to each actor that answers.

Measured on Ray 2.60 (README, "Serving and scale-out"): actors with queued work on a node that
dies lose that work (``ActorUnavailableError`` after their task retries), and a restarting actor
that cannot be placed swallows work forever. So scheduling stays in the driver: an actor gets a
video only after it answered ``ping``, holds one video at a time, and when its worker dies the
video goes back to the front of the queue (not an attempt) while the actor is probed until it is
back; a video whose own code fails is retried, then reported with its error. Ray restarts dead
actors (``max_restarts=-1``) wherever the cluster has room.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from diffvos.dataset.layout import Video


class VideoTracker:
    """The actor: a runtime loaded once, then one video per call (made remote by :func:`run_pool`)."""

    def __init__(self, bundle: str, backend: str, threads: int, session: dict[str, Any], output: str,
                 settings: dict[str, Any], allow_failed_calibration: bool = False) -> None:
        from diffvos.config import SessionConfig
        from diffvos.dataset.store import VideoStore
        from diffvos.runtime.session import Runtime

        self.runtime = Runtime(bundle, backend=backend, threads=threads,
                               allow_failed_calibration=allow_failed_calibration)
        self.config = SessionConfig.from_options(**session)
        self.store = VideoStore(output, settings)

    def ping(self) -> str:
        return self.runtime.provider

    def track(self, video: dict[str, Any]) -> dict[str, Any]:
        from diffvos.dataset.track import track_one

        return track_one(self.runtime, Video.from_dict(video), self.store, self.config).to_dict()


@dataclass
class PoolResult:
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    worker_losses: int = 0


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def run_pool(videos: list[Video], actor_args: tuple, *, actors: int, gpus_per_actor: float = 0,
             cpus_per_actor: float = 1, max_attempts: int = 3, actor_wait_s: float = 120.0,
             on_done: Callable[[str, dict | None, str | None], None] | None = None,
             on_tick: Callable[[], None] | None = None) -> PoolResult:
    """Track ``videos`` on ``actors`` actors of the connected Ray cluster."""
    import ray
    from ray.exceptions import (
        ActorDiedError,
        ActorUnavailableError,
        RayActorError,
        RayTaskError,
    )

    remote = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=-1,
                        max_task_retries=0)(VideoTracker)
    pool = [remote.remote(*actor_args) for _ in range(actors)]
    todo = collections.deque((v, 1) for v in videos)
    free: collections.deque = collections.deque()
    probing = {a.ping.remote(): a for a in pool}
    running: dict[Any, tuple[Any, Video, int]] = {}
    result = PoolResult()
    last_progress, last_actor_error = time.monotonic(), "no worker answered"

    def finish(name: str, record: dict | None, error: str | None) -> None:
        if error is None:
            result.done[name] = record
        else:
            result.failed[name] = error
        if on_done:
            on_done(name, record, error)

    try:
        while todo or running:
            while todo and free:
                actor = free.popleft()
                video, attempt = todo.popleft()
                running[actor.track.remote(video.to_dict())] = (actor, video, attempt)
            ready, _ = ray.wait(list(running) + list(probing), num_returns=1, timeout=0.5)
            if on_tick:
                on_tick()
            for ref in ready:
                if ref in probing:
                    actor = probing.pop(ref)
                    try:
                        ray.get(ref)
                        free.append(actor)
                        last_progress = time.monotonic()
                    except ActorDiedError as exc:  # for good (e.g. the runtime cannot load)
                        last_actor_error = _cause(exc)
                    except (ActorUnavailableError, RayActorError):  # restarting: ask again
                        probing[actor.ping.remote()] = actor
                    continue
                actor, video, attempt = running.pop(ref)
                try:
                    record = ray.get(ref)
                except RayTaskError as exc:  # the video failed: retry, then report
                    free.append(actor)
                    if attempt < max_attempts:
                        todo.append((video, attempt + 1))
                    else:
                        finish(video.name, None, f"failed {attempt} times: {_cause(exc)}")
                    continue
                except (RayActorError, ActorUnavailableError):  # the worker died: not the video's fault
                    result.worker_losses += 1
                    todo.appendleft((video, attempt))
                    probing[actor.ping.remote()] = actor
                    continue
                free.append(actor)
                last_progress = time.monotonic()
                finish(video.name, record, None)
            stuck = todo and not running and not free
            if stuck and (not probing or time.monotonic() - last_progress > actor_wait_s):
                for video, _ in todo:
                    finish(video.name, None, f"no live worker ({last_actor_error})")
                todo.clear()
    finally:
        for actor in pool:
            ray.kill(actor)
    return result
