"""Several streams per feature-graph call: one call steps many sessions.

A camera box tracks many streams with one bundle; the feature graph is most of a step's cost and
runs far better on a batch than once per stream. :func:`step_many` takes one step per session
and runs each through the same three phases as :meth:`Session.step` (``begin`` -> features ->
``finish``), except that the feature graph runs once on the stacked inputs of every session that
shares its engine and input size, ``streams.max_streams`` of them per call (bundles without a
stream axis: one call each). Propagation then runs per session, on its own memory. Sessions may be
at any frame, track any number of objects, start (first mask) or add objects in the same call.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from diffvos.errors import InputError
from diffvos.runtime.device import DeviceTensor
from diffvos.runtime.features import Tensor
from diffvos.runtime.session import PendingStep, Session


@dataclass
class StreamStep:
    """One session's step in a batched call: the arguments of :meth:`Session.step`."""

    session: Session
    frame: np.ndarray
    mask: np.ndarray | None = None
    object_ids: Sequence[int] | None = None
    out: np.ndarray | None = None
    probs: np.ndarray | None = None


def _as_step(item: StreamStep | tuple, index: int) -> StreamStep:
    if isinstance(item, StreamStep):
        return item
    if isinstance(item, tuple) and 2 <= len(item) <= 6 and isinstance(item[0], Session):
        return StreamStep(*item)
    raise InputError(f"steps[{index}] must be a StreamStep or a (session, frame[, mask[, object_ids]]) tuple, "
                     f"got {type(item).__name__}")


def step_many(steps: Iterable[StreamStep | tuple], *, return_exceptions: bool = False) -> list[np.ndarray | Exception]:
    """Step each session once; return the label maps in the order of ``steps``.

    Every step is checked before any session changes: by default the first bad one raises and no
    session has changed (the feature graph's failure too); with ``return_exceptions`` a bad step's
    place in the result holds its exception and the other sessions are stepped. A session appears
    at most once per call (its frames are sequential). Sessions are held in a fixed order
    (``id``), so concurrent calls over overlapping sessions cannot deadlock.
    """
    items = [_as_step(item, i) for i, item in enumerate(steps)]
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        if id(item.session) in seen:
            raise InputError(f"steps[{i}] steps the session of steps[{seen[id(item.session)]}] again: a session's "
                             "frames are sequential, give one per call")
        seen[id(item.session)] = i
    results: list[np.ndarray | Exception | None] = [None] * len(items)
    with contextlib.ExitStack() as held:
        pending: dict[int, PendingStep] = {}
        for i in sorted(range(len(items)), key=lambda k: id(items[k].session)):
            s = items[i]
            try:
                pending[i] = held.enter_context(s.session.begin(s.frame, s.out, s.mask, s.object_ids, s.probs))
            except Exception as exc:  # noqa: BLE001 - the caller asked for exceptions as results
                if not return_exceptions:
                    raise
                results[i] = exc
        features: dict[int, tuple[Tensor, float]] = {}
        for group in _calls(items, pending):
            lead = items[group[0]].session.features
            t0 = time.perf_counter()
            try:
                out = lead.run(lead.stack([pending[i].x_t for i in group]))
            except Exception as exc:  # noqa: BLE001
                if not return_exceptions:
                    raise
                for i in group:
                    results[i] = exc
                continue
            ms = (time.perf_counter() - t0) * 1e3
            for row, i in enumerate(group):
                features[i] = (out[row], ms)
        for i, (feats, ms) in features.items():
            try:
                results[i] = items[i].session.finish(pending[i], feats, ms)
            except Exception as exc:  # noqa: BLE001
                if not return_exceptions:
                    raise
                results[i] = exc
    return results  # type: ignore[return-value]


def _calls(items: list[StreamStep], pending: dict[int, PendingStep]) -> list[list[int]]:
    """The feature-graph calls: steps sharing an engine, an input shape and where the input lies
    (host or device), in order, at most the bundle's ``max_streams`` per call."""
    groups: dict[tuple[int, tuple[int, ...], bool], list[int]] = {}
    for i in sorted(pending):
        features, x_t = items[i].session.features, pending[i].x_t
        groups.setdefault((id(features.engine), tuple(x_t.shape), isinstance(x_t, DeviceTensor)), []).append(i)
    calls = []
    for members in groups.values():
        size = items[members[0]].session.features.max_streams
        calls.extend(members[k : k + size] for k in range(0, len(members), size))
    return calls
