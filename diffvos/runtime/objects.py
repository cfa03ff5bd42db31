"""The caller's object ids <-> propagation channels (compare Cutie's object manager).

Callers name objects with any uint8 ids (1..255, not necessarily contiguous or sorted); the
propagation works on channels 1..K (0 is the background). Channel i+1 is ``ids[i]``: objects keep
the order in which they were added, and removing one shifts the channels above it down.
Planning an addition (:meth:`ObjectManager.plan`) checks everything without changing state, so a
rejected call leaves the session as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffvos.config import MAX_OBJECTS
from diffvos.errors import InputError, NoSuchObjectError


class ObjectManager:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.lut = np.zeros(256, np.uint8)  # channel -> object id

    def __len__(self) -> int:
        return len(self.ids)

    def plan(self, mask: np.ndarray, object_ids: Sequence[int] | None = None) -> list[int]:
        """The ids of ``mask`` to add: ``object_ids`` if given (each must be in the mask and not
        tracked yet), else every nonzero id of the mask not tracked yet, ascending."""
        present = {int(i) for i in np.flatnonzero(np.bincount(mask.ravel(), minlength=256)) if i}
        if object_ids is None:
            new = sorted(present.difference(self.ids))
            if not new:
                raise InputError("the mask holds no object that is not tracked already"
                                 + (f" (tracked: {self.ids})" if self.ids else ""))
        else:
            new = []
            for oid in object_ids:
                if not isinstance(oid, (int, np.integer)) or isinstance(oid, bool) or not 0 < oid <= MAX_OBJECTS:
                    raise InputError(f"object ids must be integers in 1..{MAX_OBJECTS}, got {oid!r}")
                if oid not in present:
                    raise InputError(f"object {int(oid)} is not in the mask (the mask holds {sorted(present)})")
                if oid in self.ids or oid in new:
                    raise InputError(f"object {int(oid)} is tracked already or listed twice")
                new.append(int(oid))
            if not new:
                raise InputError("object_ids is empty: name at least one object of the mask")
        if len(self.ids) + len(new) > MAX_OBJECTS:
            raise InputError(f"at most {MAX_OBJECTS} objects per session")
        return new

    def channels(self, mask: np.ndarray, new: Sequence[int]) -> np.ndarray:
        """``mask`` with the ``new`` ids as the channels they will get, everything else 0."""
        to_channel = np.zeros(256, np.uint8)
        to_channel[list(new)] = np.arange(len(self.ids) + 1, len(self.ids) + 1 + len(new))
        return to_channel[mask]

    def add(self, new: Sequence[int]) -> None:
        first = len(self.ids) + 1
        self.ids.extend(int(i) for i in new)
        self.lut[first : first + len(new)] = new

    def channel(self, object_id: int) -> int:
        """The channel (1..K) of a tracked object."""
        if not isinstance(object_id, (int, np.integer)) or isinstance(object_id, bool):
            raise InputError(f"object id must be an int, not {type(object_id).__name__}")
        if object_id not in self.ids:
            raise NoSuchObjectError(f"object {object_id} is not tracked (tracked: {self.ids})")
        return self.ids.index(int(object_id)) + 1

    def remove(self, object_id: int) -> None:
        del self.ids[self.channel(object_id) - 1]
        self.lut[:] = 0
        self.lut[1 : len(self.ids) + 1] = self.ids

    def clear(self) -> None:
        self.ids.clear()
        self.lut[:] = 0
