"""SIGTERM and SIGHUP handled like Ctrl-C: the signal becomes an exception in the main thread,
so every ``finally`` / ``except BaseException`` cleanup on the way out runs (temporary files
removed, a partial output recorded for ``--resume``), and the command exits with 128 + the
signal's number (143 for SIGTERM, 129 for SIGHUP), as a shell reports a process it killed.

Without this, Python's default action for SIGTERM kills the process on the spot and leaves
temporary files (the hidden ``.NAME.XXXX.mp4`` of an overlay) behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM or SIGHUP arrives (a BaseException, like
    KeyboardInterrupt, so ``except Exception`` does not swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def terminate_gracefully(signals: tuple[int, ...] = HANDLED) -> Iterator[None]:
    """Inside the block, the first of ``signals`` raises :class:`Terminated`; later ones are
    ignored so that the cleanup they interrupt can finish. Only the main thread can install
    handlers: elsewhere the block runs with the process's handlers unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
