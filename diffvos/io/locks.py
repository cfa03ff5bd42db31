"""One writer per output: a lock file beside the output (``.NAME.diffvos-lock``), held with
``flock`` and removed on release, so a second concurrent run fails at once and names the first.

Its own module because both the output policy (:mod:`diffvos.io.outputs`) and the staged writes
(:mod:`diffvos.io.atomic`) take it. ``filelock`` was considered; it leaves its lock files behind
after release, and the output policy promises that nothing of a run survives but its outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from diffvos.errors import OutputError

LOCK_SUFFIX = ".diffvos-lock"


def real_path(path: str | Path) -> Path:
    """The path with ``~`` expanded and every link resolved: what two roles are compared by."""
    return Path(os.path.realpath(Path(path).expanduser()))


class OutputLock:
    """An exclusive lock on one output path, taken without waiting.

    Re-entrant within a process (a command holding the lock may call code that takes it again).
    """

    _held: dict[Path, list] = {}  # lock path -> [fd, count]
    _guard = threading.Lock()

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        real = real_path(self.target)
        self.path = real.parent / f".{real.name}{LOCK_SUFFIX}"

    def acquire(self) -> None:
        with self._guard:
            held = self._held.get(self.path)
            if held is not None:
                held[1] += 1
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the output's folder ({exc.strerror})", self.path.parent) from exc
            self._held[self.path] = [self._lock_file(), 1]

    def _lock_file(self) -> int:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: an exclusive create is the lock
            fcntl = None
        for _ in range(50):
            flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if fcntl is None else 0)
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileExistsError:
                self._busy(None)
            except OSError as exc:
                raise OutputError(f"cannot create a lock file beside the output ({exc.strerror})", self.target) from exc
            if fcntl is None:
                return self._stamp(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._busy(fd)
            try:  # the holder before us unlinks the file before unlocking: is ours still the one there?
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return self._stamp(fd)
            except FileNotFoundError:
                pass
            os.close(fd)
        raise OutputError("cannot take the output's lock (it keeps changing)", self.target)

    def _busy(self, fd: int | None) -> None:
        who = ""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # a lock written by another tool
            info = json.loads(self.path.read_text() or "{}")
            who = f" (pid {info['pid']}, {info['command']}, since {info['since']})"
        if fd is not None:
            os.close(fd)
        raise OutputError(f"another diffvos run is writing this output{who}; wait for it to finish or choose "
                          f"another output (lock file {self.path})", self.target)

    @staticmethod
    def _stamp(fd: int) -> int:
        import sys

        info = {"pid": os.getpid(), "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:2])),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        return fd

    def release(self) -> None:
        with self._guard:
            held = self._held.get(self.path)
            if held is None:
                return
            held[1] -= 1
            if held[1]:
                return
            del self._held[self.path]
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # before unlocking: a waiter then re-checks the inode
            os.close(held[0])  # closing the last descriptor drops the flock

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
