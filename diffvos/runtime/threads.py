"""How many threads the runtime's CPU work uses, decided in one place behind the one knob
``RuntimeConfig.threads`` (``--threads``; 0 = let the runtime choose).

Why the runtime chooses instead of leaving it to the libraries: OpenBLAS (numpy's BLAS) and ONNX
Runtime each start a pool of one thread per core whose idle workers *spin* (busy-wait) for a
while after every call. A tracking step alternates between the two (the feature graph, then the
numpy propagation), so each library's spinning workers compete with the other's working ones,
and on a CPU shared with other processes every spinning thread steals time from a thread doing
work. Measured on the shared surf sequence, the library defaults made tracking 6-7x slower on a
loaded machine (see the README's performance notes and the issue-11 benchmark).

The policy (:func:`plan_threads`):

* ONNX Runtime: ``n`` intra-op threads, where ``n`` = ``--threads`` or the cores this process
  may run on (its CPU affinity, not the machine's count), with spinning off, because other
  work (propagation) always follows a graph run.
* BLAS (numpy, through threadpoolctl) during a step: 1 thread when choosing (the propagation's
  matrix products are small tiles: a second thread gains little unloaded and loses much loaded),
  ``n`` when the user sets ``--threads n``. The limit holds only inside
  :meth:`ThreadPlan.blas`, so a program embedding the runtime keeps its own BLAS settings.

Whichever kernel does the propagation (numpy today; an ONNX graph is planned) asks this module
for its settings: :meth:`ThreadPlan.configure_ort` for a graph's session options,
:meth:`ThreadPlan.blas` around numpy work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterator

_controller: Any = None
_controller_lock = threading.Lock()
_scan_lock = threading.Lock()
_active = 0  # blocks inside ThreadPlan.blas, all threads
_limiter: Any = None
_scanned_modules = -1  # len(sys.modules) at the last scan


def available_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS has it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """The thread counts of one runtime (see the module docstring)."""

    intra_op: int  # ONNX Runtime intra-op threads
    blas_threads: int  # BLAS threads inside a step
    spinning: bool  # ONNX Runtime workers busy-wait between runs

    @classmethod
    def library_defaults(cls) -> ThreadPlan:
        """Leave every library to its own defaults (0 = not set): the baseline of the benchmark."""
        return cls(intra_op=0, blas_threads=0, spinning=True)

    def configure_ort(self, options: Any) -> None:
        """Apply to an ``onnxruntime.SessionOptions``."""
        if self.intra_op:
            options.intra_op_num_threads = self.intra_op
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")

    @contextlib.contextmanager
    def blas(self) -> Iterator[None]:
        """Hold numpy's BLAS to :attr:`blas_threads` threads for the block; the process's own setting is
        restored when the last block running (in any thread) ends."""
        global _active, _limiter
        controller = _blas_controller() if self.blas_threads else None
        if controller is None:
            yield
            return
        with _controller_lock:
            if _active == 0:
                _limiter = controller.limit(limits=self.blas_threads, user_api="blas")
            _active += 1
        try:
            yield
        finally:
            with _controller_lock:
                _active -= 1
                if _active == 0 and _limiter is not None:
                    _limiter.restore_original_limits()
                    _limiter = None


def plan_threads(threads: int = 0) -> ThreadPlan:
    """The plan for ``--threads`` = ``threads`` (0: choose)."""
    if threads and threads > 0:
        return ThreadPlan(intra_op=int(threads), blas_threads=int(threads), spinning=False)
    return ThreadPlan(intra_op=available_cores(), blas_threads=1, spinning=False)


def _blas_controller() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded in this process; None when
    threadpoolctl is not installed. The scan (~0.6 ms) is redone when modules were imported since
    the last one, since an import (scipy, torch) may have loaded another BLAS library."""
    global _controller, _scanned_modules
    if _controller is False:
        return None
    if _controller is None or _scanned_modules != len(sys.modules):
        with _scan_lock:
            try:
                import numpy  # noqa: F401 - its BLAS must be loaded before the scan
                from threadpoolctl import ThreadpoolController
            except ImportError:
                _controller = False
                return None
            _scanned_modules = len(sys.modules)
            _controller = ThreadpoolController()
    return _controller
