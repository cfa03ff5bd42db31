"""Per-video outputs, written atomically, with a completion marker: what makes a run resumable.

A video's masks are written into a hidden staging folder beside the output
(``.<video>.partial-<random>``); when the video is complete its marker (:data:`MARKER`: frames,
time, the run's settings) is written into it and the folder is renamed to ``<video>`` in one
step. So ``<output>/<video>`` exists only whole, a crash or a lost node leaves at most a staging
folder (removed by the next run), and a rerun skips every video that has its marker.

The driver of a run applies the project's output policy (:mod:`diffvos.io.outputs`) to the whole
folder: it must lie apart from the inputs, one run writes into it at a time (its lock), and it may
hold nothing but this command's results (:meth:`VideoStore.check_contents`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from diffvos.errors import InputError, OutputError
from diffvos.io.atomic import check_writable_dir, write_text_atomic

MARKER = ".diffvos-video.json"
PARTIAL = ".partial-"


class VideoStore:
    """The output folder of a dataset run: one subfolder per finished video."""

    def __init__(self, root: str | Path, settings: dict[str, Any]) -> None:
        self.root = check_writable_dir(root)
        self.settings = settings

    def marker(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / name / MARKER).read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def done(self, name: str) -> bool:
        m = self.marker(name)
        return m is not None and m.get("settings") == self.settings

    def check_contents(self, names: list[str]) -> None:
        """Refuse a folder holding anything but results of ``track-dataset`` for these videos
        (finished video folders, staging folders): user files are never mixed with results."""
        foreign = [p.name for p in self.root.iterdir()
                   if not (p.is_dir() and (p.name in names and self.marker(p.name) is not None
                                           or p.name.startswith(".") and PARTIAL in p.name))]
        if foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"--output holds files that are not results of this dataset run ({shown}); "
                              "choose a new or empty folder", self.root)

    def check_resumable(self, names: list[str], force: bool = False) -> None:
        """Refuse to mix results of other settings (another bundle or options) into this folder."""
        other = [n for n in names if (m := self.marker(n)) is not None and m.get("settings") != self.settings]
        if other and not force:
            raise InputError(f"{len(other)} finished video(s) here ({', '.join(other[:3])}) were tracked with other "
                             "settings (bundle or options); use another --output, or --force to track them again",
                             self.root)

    def clean_partials(self) -> int:
        """Remove staging folders left by an interrupted run; returns how many."""
        stale = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(".") and PARTIAL in p.name]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return len(stale)

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A staging folder for video ``name``; on success it becomes ``<root>/<name>``."""
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise InputError(f"bad video name {name!r}")
        stage = self.root / f".{name}{PARTIAL}{secrets.token_hex(6)}"
        stage.mkdir()  # mode from the umask, like any output folder (mkdtemp would make it private)
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        final = self.root / name
        try:
            if final.exists():  # an older result (other settings, --force): replaced whole
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=self.root))
                os.replace(final, old / name)
                os.replace(stage, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, final)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise OutputError(f"cannot publish the video's masks ({exc.strerror})", final) from exc

    def finish(self, stage: Path, record: dict[str, Any]) -> None:
        """Write the completion marker into the staging folder (last, before the rename)."""
        write_text_atomic(stage / MARKER, json.dumps({**record, "settings": self.settings}, indent=1) + "\n")
