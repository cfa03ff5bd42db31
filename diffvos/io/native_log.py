"""What native code (libjpeg, libpng and FFmpeg inside OpenCV; ONNX Runtime's logger) prints on
the process's stderr, captured instead of shown raw.

libjpeg reports a truncated or corrupt JPEG as a warning on file descriptor 2 and still returns
an image (the missing part grey); FFmpeg prints its errors the same way and OpenCV's reader simply
stops. Neither reaches Python, so the only way to know a frame is damaged is to read what was
printed: :func:`capture_fd2` points descriptor 2 at a temporary file for the duration of a
block and hands back the text, which the caller turns into an error naming the frame or drops
(so users never see raw decoder noise). :mod:`diffvos.runtime.ort_log` builds on the same capture.

The redirection is process-wide; one re-entrant lock serialises captures (nested ones in a
thread restore in order), and Python's ``sys.stderr`` is flushed before and after so its output
is not mistaken for native output.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Iterator

_lock = threading.RLock()

# Lines that say nothing about the pixels: libpng's warnings are about ancillary chunks (colour
# profiles, gamma); its errors about image data come as "libpng error".
_BENIGN = re.compile(r"^libpng warning:|^\s*$")


@dataclass
class Captured:
    """Text printed on fd 2 inside a :func:`capture_fd2` block (read after it)."""

    text: str = ""

    def problems(self) -> list[str]:
        """Decoder lines that report damage (benign warnings dropped), repeated lines once."""
        seen: dict[str, None] = {}
        for line in self.text.splitlines():
            line = re.sub(r"^\[(\w+) @ 0x[0-9a-f]+\]", r"[\1]", line.strip())  # FFmpeg's "[mpeg4 @ 0x55..]"
            if not _BENIGN.search(line):
                seen.setdefault(line, None)
        return list(seen)

    def summary(self, limit: int = 2) -> str:
        """The first problems, for an error message ('' when none)."""
        lines = self.problems()
        more = f" (+{len(lines) - limit} more lines)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


@contextlib.contextmanager
def capture_fd2() -> Iterator[Captured]:
    """Capture what is written to file descriptor 2 during the block (nothing is shown)."""
    result = Captured()
    with _lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no descriptor 2 (embedded, pythonw): nothing to catch
            yield result
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield result
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                result.text = sink.read(1 << 20).decode("utf-8", "replace")
