"""Named checkpoint aliases, downloaded once into a cache and verified.

``--checkpoint adm-256-uncond`` resolves to the public guided-diffusion checkpoint. The download
streams into ``<file>.part`` (so an interrupted run resumes with an HTTP Range request instead of
starting over), is checked against the pinned size and sha256, and only then is renamed into
place: the cache never holds a file that failed verification. No third-party HTTP client is
needed (urllib only).

Environment: ``DIFFVOS_CACHE`` (cache folder, default ``~/.cache/diffvos``) and
``DIFFVOS_OFFLINE=1`` (never touch the network; say where to put the file instead).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from diffvos.errors import CheckpointError
from diffvos.io.atomic import write_text_atomic

CHUNK = 1 << 20
TIMEOUT_S = 60.0
BACKOFF_S = 1.0  # first retry delay; doubled on each consecutive failure without progress


@dataclass(frozen=True)
class CheckpointAlias:
    """A checkpoint known by name: where it comes from and what it must hash to."""

    name: str
    url: str
    filename: str
    sha256: str | None  # None: unknown upstream; recorded on first download (with a warning)
    size: int | None  # bytes
    description: str = ""


ALIASES: dict[str, CheckpointAlias] = {
    a.name: a
    for a in (
        CheckpointAlias(
            name="adm-256-uncond",
            # Linked from the openai/guided-diffusion README ("256x256 diffusion (not class conditional)").
            url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
            filename="256x256_diffusion_uncond.pt",
            # OpenAI publishes no hash; this one is recorded by several independent projects
            # (Disco Diffusion's diff_model_map, reproduction manifests listing the same size).
            sha256="a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1",
            size=2_211_383_297,
            description="guided-diffusion ADM, ImageNet 256x256, unconditional (552.8 M params)",
        ),
    )
}


def cache_dir() -> Path:
    """Where downloaded checkpoints live: the user cache (``$DIFFVOS_CACHE`` or ``~/.cache/diffvos``)."""
    from diffvos.runtime.caches import user_cache_dir

    return user_cache_dir()


def _env_offline() -> bool:
    return os.environ.get("DIFFVOS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _by_hand(alias_or_url: str, dest: Path, sha256: str | None) -> str:
    check = f" (sha256 {sha256})" if sha256 else ""
    return f"To install it by hand, download {alias_or_url} with any tool and save it as {dest}{check}."


def resolve_checkpoint(name_or_path: str | Path, *, offline: bool | None = None, progress: bool = True) -> Path:
    """An existing path is returned as is; an alias is downloaded into :func:`cache_dir` if absent.

    ``offline`` (default: ``$DIFFVOS_OFFLINE``) forbids the network: a missing alias then raises a
    CheckpointError naming the cache path and the URL. A cached file is hashed once against the
    pinned sha256 (the result is remembered in ``<file>.sha256``), so a file placed by hand is
    checked too.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    alias = ALIASES.get(str(name_or_path))
    if alias is None:
        known = ", ".join(sorted(ALIASES))
        raise CheckpointError(f"checkpoint not found: neither an existing file nor a known alias ({known})", path)
    dest = cache_dir() / alias.filename
    if dest.exists():
        _check_cached(alias, dest)
        return dest
    if offline is None:
        offline = _env_offline()
    if offline:
        raise CheckpointError(
            f"checkpoint alias '{alias.name}' is not in the cache and downloads are off (offline). "
            + _by_hand(alias.url, dest, alias.sha256),
            dest,
        )
    digest = download(alias.url, dest, sha256=alias.sha256, size=alias.size, progress=progress)
    if alias.sha256 is None:
        warnings.warn(
            f"{alias.name}: no published sha256 to check {dest} against; recorded {digest} "
            f"in {_sidecar(dest).name} so later changes are detected",
            stacklevel=2,
        )
    write_text_atomic(_sidecar(dest), digest + "\n")
    return dest


def _check_cached(alias: CheckpointAlias, dest: Path) -> None:
    """Size check every time; full hash once (remembered in the sidecar file)."""
    have = dest.stat().st_size
    if alias.size is not None and have != alias.size:
        raise CheckpointError(
            f"cached checkpoint has {have} bytes, expected {alias.size}: delete it to download it again. "
            + _by_hand(alias.url, dest, alias.sha256),
            dest,
        )
    side = _sidecar(dest)
    recorded = side.read_text().strip() if side.exists() else None
    expected = alias.sha256 or recorded
    if expected is None:  # unknown upstream hash, file placed by hand: record it now
        write_text_atomic(side, sha256_of(dest) + "\n")
        return
    if recorded == expected and side.stat().st_mtime >= dest.stat().st_mtime:
        return
    digest = sha256_of(dest)
    if digest != expected:
        raise CheckpointError(
            f"cached checkpoint has sha256 {digest}, expected {expected}: delete it to download it again. "
            + _by_hand(alias.url, dest, expected),
            dest,
        )
    write_text_atomic(side, digest + "\n")


class _Restart(Exception):
    """The server ignored our Range request: start from byte 0."""


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    *,
    retries: int = 3,
    timeout: float = TIMEOUT_S,
) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming, verifying; return the sha256.

    A connection that breaks mid-file is resumed with ``Range: bytes=N-`` (up to ``retries``
    consecutive failures without progress); a server that answers 200 instead of 206 makes the
    download restart from zero. On a size or sha256 mismatch the partial file is deleted and a
    CheckpointError raised; ``dest`` only ever appears complete and verified.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the download folder ({exc.strerror})", dest.parent) from None
    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()
    failures = 0
    best = 0  # most bytes ever held: progress means beating it (a restart from 0 does not count)
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            hasher = _fetch(url, part, offset, size, progress, timeout)
            break
        except _Restart:
            part.unlink(missing_ok=True)
            continue
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset and size is not None and offset == size:
                hasher = None  # the .part file is already complete
                break
            if exc.code == 416:
                part.unlink(missing_ok=True)
                continue
            if exc.code < 500 or failures >= retries:
                raise _network_error(url, dest, sha256, f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if failures >= retries:
                reason = getattr(exc, "reason", None) or exc
                raise _network_error(url, dest, sha256, f"{type(exc).__name__}: {reason}") from None
        new_offset = part.stat().st_size if part.exists() else 0
        failures = 0 if new_offset > max(best, offset) else failures + 1
        best = max(best, new_offset)
        if failures:
            time.sleep(BACKOFF_S * 2 ** (failures - 1))
    digest = _verify(part, dest, url, hasher, sha256, size)
    os.replace(part, dest)
    return digest


def _network_error(url: str, dest: Path, sha256: str | None, reason: str) -> CheckpointError:
    part = dest.with_name(dest.name + ".part")
    kept = f" The partial download {part} is kept and will be resumed." if part.exists() else ""
    return CheckpointError(f"cannot download {url} ({reason}).{kept} " + _by_hand(url, dest, sha256), dest)


def _fetch(url: str, part: Path, offset: int, size: int | None, progress: bool, timeout: float):
    """One HTTP request appending to ``part`` from ``offset``; return a sha256 of the whole file.

    Raises on a broken connection (after writing what arrived) so the caller can resume.
    """
    from tqdm import tqdm

    headers = {"User-Agent": "diffvos-downloader", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        status = resp.status
        if offset and status == 200:
            raise _Restart()
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range", ""))
            if start != offset:
                raise _Restart()
        else:
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
        if size is not None and total is not None and total != size:
            raise CheckpointError(f"server offers {total} bytes, expected {size}: not the pinned file", url)
        hasher = hashlib.sha256()
        if offset:
            with open(part, "rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    hasher.update(chunk)
        received = offset
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress, leave=False)
        with bar, open(part, "ab" if offset else "wb") as out:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if total is not None and received < total:
        raise http.client.IncompleteRead(b"", total - received)
    return hasher


def _content_range(value: str) -> tuple[int, int | None]:
    """``bytes 100-199/200`` -> (100, 200); total None when the server writes ``*``."""
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        start = int(span.split("-", 1)[0])
        if unit.strip() != "bytes":
            raise ValueError(unit)
        return start, None if total.strip() == "*" else int(total)
    except ValueError:
        raise _Restart() from None


def _verify(part: Path, dest: Path, url: str, hasher, sha256: str | None, size: int | None) -> str:
    have = part.stat().st_size
    if size is not None and have != size:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"downloaded {have} bytes from {url}, expected {size}; the partial file was deleted", dest
        )
    digest = hasher.hexdigest() if hasher is not None else sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"sha256 mismatch for {url}: got {digest}, expected {sha256.lower()}; the download was deleted "
            "(a changed or corrupted file upstream, or a proxy rewriting it)",
            dest,
        )
    return digest
