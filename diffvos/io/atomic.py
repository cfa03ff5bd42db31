"""Atomic output: files and directories appear whole or not at all.

A file is written next to its destination under a temporary name, flushed, then renamed
(``os.replace`` is atomic on POSIX and Windows). A directory is staged under a hidden
sibling name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from diffvos.errors import OutputError
from diffvos.io.locks import OutputLock


def current_umask() -> int:
    """The process umask (read by setting and restoring it: call outside threaded hot paths)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write here: {exc.strerror}", path.parent) from exc
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it private; outputs are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise OutputError naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("must be a folder, but this is a file", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".diffvos-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output directory is not writable ({exc.strerror})", path) from exc
    return path


def prepare_output_dir(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing non-empty directory unless ``force``; return the resolved path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a directory", path)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputError("output directory exists and is not empty (use --force to replace it)", path)
    return path


@contextlib.contextmanager
def staged_directory(final: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a hidden staging directory; on success it replaces ``final`` in one rename.

    On any exception the staging directory is removed and ``final`` is left untouched, so a
    failed export never leaves a half-written bundle.
    """
    final = prepare_output_dir(final, force).absolute()
    check_writable_dir(final.parent)
    with OutputLock(final):  # one writer at a time (re-entrant: a command may hold it already)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
        os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes it private; a bundle is an ordinary folder
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _commit(stage, final)


def _commit(stage: Path, final: Path) -> None:
    if final.exists():
        swap_in(stage, final)
    else:
        os.replace(stage, final)


def swap_in(stage: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``stage``: two renames, the old folder removed last (a
    failure between them puts the old one back)."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.replace(final, old)
    try:
        os.replace(stage, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
