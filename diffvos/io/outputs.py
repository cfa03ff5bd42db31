"""The output policy of every command that writes (track, track-dataset, calibrate, export, fp16,
eval's CSV, overlays): user data is never overwritten, mixed or lost.

* An output must be apart from every input: it may not be, contain or lie inside a frame folder,
  video, mask, bundle or checkpoint (:func:`check_apart`).
* An existing non-empty output is refused unless the user says ``--force`` (it is then replaced
  whole: written beside it under a hidden name and swapped in at the end, so old and new files
  never mix and a failed run leaves the old output as it was) or ``--resume`` (continue the run
  recorded in the folder, when its inputs and options match).
* One writer per output: a lock file beside the output (``.NAME.diffvos-lock``, held with
  ``flock`` and removed on release) makes a second concurrent run fail at once, naming the first.
* A run folder holds a small manifest (:data:`RUN_MANIFEST`): the command, the inputs and their
  fingerprints, the options, frames done and whether the run completed, so ``--resume`` and a
  later ``eval`` can check what the folder holds.

The lock is :class:`~diffvos.io.locks.OutputLock` (its own module: the staged writes of
:mod:`diffvos.io.atomic` take it too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from diffvos.errors import OutputError
from diffvos.io.atomic import current_umask, swap_in, write_text_atomic
from diffvos.io.locks import OutputLock, real_path

RUN_MANIFEST = ".diffvos-run.json"  # hidden: a mask folder stays one PNG per frame for other tools
RUN_SCHEMA = 1
_SAVE_EVERY_S = 1.0  # a run's manifest is rewritten at most this often while frames are written


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --- apart from the inputs ----------------------------------------------------------------------------


def check_apart(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output that is, contains or lies inside an input (symlinks and hard links
    resolved); ``outputs`` and ``inputs`` map a role ('--output', 'frames', ...) to a path."""
    for oname, out in outputs.items():
        if out is None:
            continue
        ro = real_path(out)
        for iname, inp in inputs.items():
            if inp is None:
                continue
            ri = real_path(inp)
            if ro == ri or _same_file(ro, ri):
                why = f"is the {iname} input {inp}: writing it would destroy the input"
            elif ro in ri.parents:
                why = f"contains the {iname} input {inp}: writing there could overwrite it"
            elif ri in ro.parents:
                why = f"lies inside the {iname} input {inp}: the outputs would mix with the input"
            else:
                continue
            raise OutputError(f"{oname} {why}; choose an output apart from the inputs", out)


# --- one writer per output ----------------------------------------------------------------------------


# --- kinds and emptiness ------------------------------------------------------------------------------


def _listing(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise OutputError(f"cannot list the output folder ({exc.strerror})", path) from exc


def _writable_parent(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, so this output cannot be created under it", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create the output: the folder {parent} is not writable", path)


def check_output_file(path: str | Path, role: str, *, inputs: Mapping[str, str | Path | None] = {},
                      force: bool = False) -> Path:
    """A file output (overlay video, CSV): not a folder, apart from the inputs, in a writable
    folder, and not an existing file unless ``force``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{role} is a folder; give a file name", path)
    check_apart({role: path}, inputs)
    if path.exists() and not force:
        raise OutputError(f"{role} exists; use --force to replace it", path)
    _writable_parent(path)
    if path.exists() and not os.access(path.absolute().parent, os.W_OK):
        raise OutputError(f"{role} cannot be replaced: its folder is not writable", path)
    return path


def check_output_dir(path: str | Path, role: str = "--output", *, inputs: Mapping[str, str | Path | None] = {},
                     force: bool = False, resume: bool = False) -> str:
    """A folder output apart from the inputs: 'new' (absent or empty), 'replace' (non-empty with
    ``force``) or 'resume' (non-empty with ``resume``); anything else is refused with the reason
    and the way out."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{role} must be a folder, but this is a file", path)
    check_apart({role: path}, inputs)
    if not path.exists():
        _writable_parent(path)
        return "new"
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{role} folder is not writable", path)
    names = _listing(path)
    if not names:
        return "new"
    if resume:
        return "resume"
    if force:
        _writable_parent(path)
        return "replace"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    hint = " or --resume to continue the run recorded in it" if RUN_MANIFEST in names else ""
    raise OutputError(f"{role} folder is not empty (holds {shown}); use --force to replace it whole{hint}, "
                      "or choose a new folder", path)


@contextlib.contextmanager
def guard_outputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None] = {},
                  *, force: bool = False, dirs: tuple[str, ...] = ()) -> Iterator[None]:
    """Check outputs (folders named in ``dirs``, files otherwise) against the policy and hold their
    locks for the block: for commands that write through :func:`~diffvos.io.atomic.staged_directory`
    or atomic files themselves (export, calibrate, fp16, eval's CSV)."""
    present = {k: v for k, v in outputs.items() if v is not None}
    for role, path in present.items():
        if role in dirs:
            check_output_dir(path, role, inputs=inputs, force=force)
        else:
            check_output_file(path, role, inputs=inputs, force=force)
    with contextlib.ExitStack() as stack:
        for path in present.values():
            stack.enter_context(OutputLock(path))
        yield


# --- the run manifest ---------------------------------------------------------------------------------


def fingerprint(path: str | Path | None) -> dict[str, Any] | None:
    """What identifies an input cheaply: a file's size and sha256 when small (masks, manifests),
    size and mtime when large (videos); a folder's entry names, sizes and mtimes."""
    if path is None:
        return None
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for q in sorted(p.iterdir()):
            with contextlib.suppress(OSError):
                st = q.stat()
                h.update(f"{q.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"path": str(real_path(p)), "listing_sha256": h.hexdigest()}
    st = p.stat()
    if st.st_size <= 64 << 20:
        h.update(p.read_bytes())
        return {"path": str(real_path(p)), "size": st.st_size, "sha256": h.hexdigest()}
    return {"path": str(real_path(p)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class RunRecord:
    """What a run folder holds (written as :data:`RUN_MANIFEST` inside it)."""

    command: str
    version: str
    inputs: dict[str, Any]  # role -> fingerprint
    options: dict[str, Any]
    frames_total: int = 0
    frames_done: int = 0  # frames handled, in order (tracked or skipped)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"index", "name", "reason"}
    complete: bool = False
    schema: int = RUN_SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True, default=str) + "\n"

    def differences(self, other: RunRecord) -> list[str]:
        """What differs in identity (command, version, inputs, options) from ``other``."""
        out = [name for name in ("command", "version") if getattr(self, name) != getattr(other, name)]
        for kind in ("inputs", "options"):
            mine, theirs = getattr(self, kind), getattr(other, kind)
            out += [f"{kind[:-1]} {k}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        return out


def read_run_record(folder: str | Path) -> RunRecord | None:
    """The run manifest of ``folder``; None when it has none; OutputError when it is unreadable."""
    path = Path(folder) / RUN_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(RunRecord)}
        return RunRecord(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, TypeError) as exc:
        raise OutputError(f"cannot read the run manifest ({exc})", path) from exc


class RunFolder:
    """A run's output folder under the policy (see the module docstring).

    Use as a context manager around the run. ``__init__`` checks the folder and takes its lock
    (so a second run is told another one is writing, whatever the folder holds by then); the
    block's end releases it (:meth:`release` gives it up when the run never starts). Write files
    under :attr:`dir`; call
    :meth:`progress` as frames are done; leaving the block without an exception marks the run
    complete (and swaps a replaced folder in); leaving it with one keeps a new or resumed
    folder's finished frames, recorded as incomplete for ``--resume`` (or removes the folder when
    nothing was written), and drops a replacement's staging folder, leaving the old output as it was.
    """

    def __init__(self, path: str | Path, record: RunRecord, *, inputs: Mapping[str, str | Path | None] = {},
                 force: bool = False, resume: bool = False, role: str = "--output") -> None:
        self.final = Path(path).absolute()
        self.record = record
        self.role = role
        if self.final.exists() and not self.final.is_dir():
            raise OutputError(f"{role} must be a folder, but this is a file", self.final)
        check_apart({role: self.final}, inputs)  # before the lock, which may create the parent folder
        if not self.final.exists():
            _writable_parent(self.final)
        self.done = 0  # frames handled by an earlier run (resume): not to be written again
        self.dir = self.final
        self._lock = OutputLock(self.final)
        self._created = False
        self._saved_at = 0.0
        self.kept_note = ""
        self._lock.acquire()
        try:
            self.mode = check_output_dir(self.final, role, inputs=inputs, force=force, resume=resume)
            if self.mode == "resume":
                self._check_resume()
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        """Give up the folder without running (its lock is released; nothing was written)."""
        self._lock.release()

    def _check_resume(self) -> None:
        old = read_run_record(self.final)
        if old is None:
            raise OutputError(f"{self.role} folder holds no run manifest ({RUN_MANIFEST}), so there is no run to "
                              "resume; use --force to replace it", self.final)
        diff = self.record.differences(old)
        if diff:
            raise OutputError(f"cannot resume: the run recorded there differs in {', '.join(diff)}; use --force to "
                              "replace it, or give the same inputs and options", self.final)
        self.done = int(old.frames_done)
        self.record.frames_done = self.done
        self.record.skipped = list(old.skipped)
        self.record.complete = bool(old.complete)

    def locate(self, path: str | Path) -> Path:
        """Where to write ``path`` during the run: a path inside the final folder maps into the
        staging folder of a replacement."""
        p = Path(path).absolute()
        if self.dir != self.final and self.final in p.parents:
            return self.dir / p.relative_to(self.final)
        return p

    def __enter__(self) -> RunFolder:
        try:
            if self.mode == "replace":
                stage = tempfile.mkdtemp(prefix=f".{self.final.name}.staging-", dir=self.final.parent)
                os.chmod(stage, 0o777 & ~current_umask())
                self.dir = Path(stage)
            else:
                self._created = not self.final.exists()
                self.final.mkdir(parents=True, exist_ok=True)
            self.save(force=True)
        except OSError as exc:
            self._lock.release()
            raise OutputError(f"cannot prepare the output folder ({exc.strerror})", self.final) from exc
        except BaseException:
            self._lock.release()
            raise
        return self

    def progress(self, frames_done: int, skipped: list[dict[str, Any]] | None = None) -> None:
        self.record.frames_done = frames_done
        if skipped is not None:
            self.record.skipped = skipped
        self.save()

    def save(self, force: bool = False) -> None:
        """Rewrite the run manifest (at most once a second unless ``force``)."""
        now = time.monotonic()
        if force or now - self._saved_at >= _SAVE_EVERY_S:
            write_text_atomic(self.dir / RUN_MANIFEST, self.record.to_json())
            self._saved_at = now

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self.record.complete = True
                self.save(force=True)
                if self.dir != self.final:
                    swap_in(self.dir, self.final)
                    self.dir = self.final
            else:
                self._keep_or_drop()
                attach_note(exc, self.kept_note)
        finally:
            self._lock.release()

    def _keep_or_drop(self) -> None:
        if self.dir != self.final:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.kept_note = f"{self.final} was left as it was"
            return
        written = [n for n in _listing(self.final) if n != RUN_MANIFEST]
        if self._created and not written:
            shutil.rmtree(self.final, ignore_errors=True)
            return
        with contextlib.suppress(OSError, OutputError):
            self.save(force=True)
        self.kept_note = (f"kept {self.record.frames_done} of {self.record.frames_total} frames in {self.final}; "
                          "continue with --resume or start again with --force")


def kept_note(exc: BaseException) -> str:
    """The note a :class:`RunFolder` attached to an exception leaving it ('' when none)."""
    return getattr(exc, "diffvos_output_note", "")


def attach_note(exc: BaseException, note: str) -> None:
    if note:
        with contextlib.suppress(AttributeError):
            exc.diffvos_output_note = note


