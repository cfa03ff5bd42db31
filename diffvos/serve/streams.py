"""The server's stream table: one :class:`~diffvos.runtime.session.Session` per stream, bounded,
evicted when idle, stepped in batches.

Triton hands the model a batch of requests from different sequences (streams); this table turns
them into one :meth:`Runtime.step_many` call, so the feature graph runs once for all of them,
and answers each request on its own: a bad request gets its own error and leaves the other
streams (and its own stream's state) as they were. Plain Python over the runtime, no Triton
import: the Triton adapter (:mod:`diffvos.serve.triton_model`) only converts tensors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from diffvos.config import SessionConfig
from diffvos.errors import DiffvosError, InputError, NoSuchObjectError, NotStartedError
from diffvos.runtime.session import Runtime, Session, StreamStep
from diffvos.serve.protocol import (
    FRAME,
    INTERNAL,
    INVALID,
    MASK,
    NOT_FOUND,
    UNAVAILABLE,
)

EVICTION_MARGIN_S = 1.0  # Triton expires an idle sequence first; the table follows a little later


class RequestError(DiffvosError):
    """A request that cannot be served; ``kind`` picks the Triton error code (protocol.INVALID, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class TrackRequest:
    """One request of a stream, as the Triton adapter decoded it."""

    stream: str  # the Triton sequence (correlation) id, as text
    start: bool = False
    end: bool = False
    frame: np.ndarray | None = None  # uint8 [H, W, 3]
    mask: np.ndarray | None = None  # uint8 [H, W]
    object_ids: list[int] | None = None
    remove: list[int] = field(default_factory=list)


@dataclass
class TrackReply:
    labels: np.ndarray  # uint8 [H, W]; [0, 0] for a request without a frame
    objects: np.ndarray  # int32 [K]
    frames: int


@dataclass
class _Stream:
    session: Session
    last: float


class StreamTable:
    """Sessions by stream id over one runtime, for the requests Triton batches together."""

    def __init__(self, runtime: Runtime, *, max_streams: int, idle_timeout_s: float, max_pixels: int,
                 config: SessionConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if max_streams < 1 or idle_timeout_s <= 0 or max_pixels < 1:
            raise InputError(f"max_streams ({max_streams}), idle timeout ({idle_timeout_s} s) and max_pixels "
                             f"({max_pixels}) must be positive")
        self.runtime = runtime
        self.max_streams, self.idle_timeout_s, self.max_pixels = max_streams, idle_timeout_s, max_pixels
        self.config = config or SessionConfig()
        self.clock = clock
        self.streams: dict[str, _Stream] = {}
        self.evicted = 0
        self.lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------------

    def handle(self, requests: Sequence[TrackRequest]) -> list[TrackReply | RequestError]:
        """Serve one Triton batch; one reply or error per request, in order. Requests of the same
        stream in one batch are served in their order."""
        with self.lock:
            self._evict_idle()
            replies: list[TrackReply | RequestError | None] = [None] * len(requests)
            todo = list(range(len(requests)))
            while todo:  # rounds: each stream at most once per step_many call
                seen: set[str] = set()
                this_round = [i for i in todo if not (requests[i].stream in seen or seen.add(requests[i].stream))]
                todo = [i for i in todo if i not in this_round]
                self._round(requests, this_round, replies)
            return replies  # type: ignore[return-value]

    def evict_idle(self) -> int:
        """Close the sessions idle for longer than the timeout; returns how many."""
        with self.lock:
            return self._evict_idle()

    def close(self) -> None:
        with self.lock:
            for s in self.streams.values():
                s.session.close()
            self.streams.clear()

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    # -- one round ---------------------------------------------------------------------------------

    def _round(self, requests: Sequence[TrackRequest], indices: list[int],
               replies: list[TrackReply | RequestError | None]) -> None:
        steps: list[StreamStep] = []
        stepped: list[int] = []
        for i in indices:
            r = requests[i]
            try:
                stream = self._prepare(r)
            except RequestError as exc:
                replies[i] = exc
                if r.end:
                    self._drop(r.stream)
                continue
            if r.frame is None:  # an end or a removal without a frame
                replies[i] = self._reply(stream.session, np.zeros((0, 0), np.uint8))
                if r.end:
                    self._drop(r.stream)
                continue
            steps.append(StreamStep(stream.session, r.frame, r.mask, r.object_ids))
            stepped.append(i)
        results = self.runtime.step_many(steps, return_exceptions=True) if steps else []
        for i, result in zip(stepped, results):
            r = requests[i]
            stream = self.streams.get(r.stream)
            replies[i] = _error(result) if isinstance(result, Exception) else self._reply(stream.session, result)
            if r.end:
                self._drop(r.stream)

    def _prepare(self, r: TrackRequest) -> _Stream:
        """Check a request against the table and its stream; open (start) or find the stream,
        apply removals. Raises RequestError; only a valid start changes the table."""
        if r.frame is not None:
            self._check_frame(r.frame, r.mask)
        stream = self.streams.get(r.stream)
        if r.start:
            if r.frame is None:
                raise RequestError(INVALID, f"stream '{r.stream}': the first request (sequence_start) needs a {FRAME} "
                                            f"and a {MASK}")
            if stream is None and len(self.streams) >= self.max_streams:
                raise RequestError(UNAVAILABLE, f"too many open streams ({self.max_streams}): end one (sequence_end) "
                                                f"or retry later")
            h, w = r.frame.shape[:2]
            try:
                session = self.runtime.session(w, h, self.config)
            except InputError as exc:
                raise RequestError(INVALID, f"stream '{r.stream}': {exc}") from exc
            if stream is not None:  # a restart replaces the old session
                stream.session.close()
            stream = self.streams[r.stream] = _Stream(session, self.clock())
        elif stream is None:
            raise RequestError(NOT_FOUND, f"stream '{r.stream}' is not open: it was never started, has ended, or "
                                          f"was idle for more than {self.idle_timeout_s:g} s; send its first frame "
                                          "and mask with sequence_start")
        stream.last = self.clock()
        session = stream.session
        if r.frame is not None and r.frame.shape[:2] != (session.height, session.width):
            raise RequestError(INVALID, f"stream '{r.stream}': {FRAME} is {r.frame.shape[1]}x{r.frame.shape[0]}, the "
                                        f"stream started at {session.width}x{session.height}")
        tracked = set(session.info.object_ids)
        unknown = [o for o in r.remove if o not in tracked]
        if unknown:
            raise RequestError(INVALID, f"stream '{r.stream}': cannot remove object(s) {unknown}: tracked are "
                                        f"{sorted(tracked)}")
        for o in dict.fromkeys(r.remove):
            session.remove(o)
        return stream

    def _check_frame(self, frame: np.ndarray, mask: np.ndarray | None) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise RequestError(INVALID, f"{FRAME} must be uint8 [height, width, 3], got {frame.dtype} "
                                        f"{list(frame.shape)}")
        h, w = frame.shape[:2]
        if h * w > self.max_pixels:
            raise RequestError(INVALID, f"{FRAME} of {w}x{h} = {h * w} pixels exceeds this server's max_pixels "
                                        f"({self.max_pixels})")
        if h == 0 or w == 0:
            raise RequestError(INVALID, f"{FRAME} is empty ({w}x{h})")
        if mask is not None and (mask.dtype != np.uint8 or mask.shape != (h, w)):
            raise RequestError(INVALID, f"{MASK} must be uint8 [{h}, {w}] like the frame, got {mask.dtype} "
                                        f"{list(mask.shape)}")

    def _reply(self, session: Session, labels: np.ndarray) -> TrackReply:
        info = session.info
        return TrackReply(labels, np.asarray(info.object_ids, np.int32), info.frames)

    def _drop(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.session.close()

    def _evict_idle(self) -> int:
        limit = self.clock() - self.idle_timeout_s - EVICTION_MARGIN_S
        idle = [k for k, s in self.streams.items() if s.last < limit]
        for k in idle:
            self._drop(k)
        self.evicted += len(idle)
        return len(idle)


def _error(exc: Exception) -> RequestError:
    """A runtime exception as the request's error."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, (InputError, NotStartedError, NoSuchObjectError)):
        return RequestError(INVALID, str(exc))
    return RequestError(INTERNAL, f"{type(exc).__name__}: {exc}")
