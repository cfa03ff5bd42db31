"""What native decoders (libjpeg, libpng, FFmpeg inside OpenCV) print while they decode.

libjpeg reports a truncated or corrupt JPEG as a warning on the process's stderr and still
returns an image (the missing part grey); FFmpeg prints its errors the same way and OpenCV's
reader simply stops. Neither reaches Python, so the only way to know a frame is damaged is to
read what was printed: :func:`capture_native_output` points file descriptor 2 at a temporary
file for the duration of a decode and returns the text, which is then either turned into an
error naming the frame or dropped (so users never see raw decoder noise).

The redirection is process-wide; a lock keeps captures from nesting, and Python's own
``sys.stderr`` is flushed before and after so its output is not mistaken for a decoder's.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

_lock = threading.Lock()

# Lines that say nothing about the pixels: libpng's warnings are about ancillary chunks (colour
# profiles, gamma); its errors about image data come as "libpng error".
_BENIGN = re.compile(r"^libpng warning:|^\s*$")


class Captured:
    """Text printed on fd 2 inside a :func:`capture_native_output` block (read after it)."""

    text = ""

    def problems(self) -> list[str]:
        """Lines that report damage (benign warnings dropped), repeated lines once."""
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
def capture_native_output() -> Iterator[Captured]:
    """Capture what native code writes to file descriptor 2 during the block."""
    result = Captured()
    with _lock:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to capture
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
                result.text = sink.read(1 << 16).decode("utf-8", "replace")
