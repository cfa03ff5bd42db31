"""Checkpoint download: resume, restart, verification, offline messages. Only 127.0.0.1 is used."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from diffvos.errors import CheckpointError
from diffvos.export import download as dl

DATA = bytes((i * 7919 + (i >> 8)) % 251 for i in range(300_000))
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves DATA; honours Range unless told not to; can cut the first response midway."""

    server: "_Server"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests.append(dict(self.headers))
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(srv.data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(srv.data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(srv.data) - 1}/{len(srv.data)}")
        else:
            self.send_response(200)
        body = srv.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cuts:
            cut = srv.cuts.pop(0)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a short body
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.data = DATA
        self.honour_range = True
        self.cuts: list[int] = []  # byte counts after which successive responses are cut
        self.requests: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/ckpt.pt"


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


def test_full_download(server, tmp_path):
    dest = tmp_path / "sub" / "ckpt.pt"
    digest = dl.download(server.url, dest, sha256=SHA, size=len(DATA), progress=False)
    assert digest == SHA
    assert dest.read_bytes() == DATA
    assert not dest.with_name("ckpt.pt.part").exists()
    assert "Range" not in server.requests[0]


def test_resume_after_cut(server, tmp_path):
    server.cuts = [123_457]
    dest = tmp_path / "ckpt.pt"
    dl.download(server.url, dest, sha256=SHA, size=len(DATA), progress=False)
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0]
    assert server.requests[1]["Range"] == "bytes=123457-"
    assert dest.read_bytes() == DATA


def test_resume_leftover_part_from_earlier_run(server, tmp_path):
    dest = tmp_path / "ckpt.pt"
    dest.with_name("ckpt.pt.part").write_bytes(DATA[:5000])
    dl.download(server.url, dest, sha256=SHA, size=len(DATA), progress=False)
    assert [r.get("Range") for r in server.requests] == ["bytes=5000-"]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    server.cuts = [100_000]
    dest = tmp_path / "ckpt.pt"
    dl.download(server.url, dest, sha256=SHA, size=len(DATA), progress=False)
    ranges = [r.get("Range") for r in server.requests]
    assert ranges[:2] == [None, "bytes=100000-"]  # asked to resume, got 200: restarted
    assert ranges[-1] is None
    assert dest.read_bytes() == DATA


def test_sha256_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        dl.download(server.url, dest, sha256="0" * 64, size=len(DATA), progress=False)
    assert SHA in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()
    assert not dest.with_name("ckpt.pt.part").exists()


def test_size_mismatch_refused_before_download(server, tmp_path):
    dest = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointError, match="expected 12345"):
        dl.download(server.url, dest, size=12345, progress=False)
    assert not dest.exists()


def _alias(url: str, sha: str | None = SHA) -> dl.CheckpointAlias:
    return dl.CheckpointAlias(name="test-ckpt", url=url, filename="test.pt", sha256=sha, size=len(DATA))


def test_unreachable_server_names_cache_path_and_url(monkeypatch, tmp_path):
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    url = f"http://127.0.0.1:{_closed_port()}/test.pt"
    monkeypatch.setitem(dl.ALIASES, "test-ckpt", _alias(url))
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as info:
        dl.resolve_checkpoint("test-ckpt", offline=False, progress=False)
    msg = str(info.value)
    assert str(tmp_path / "cache" / "test.pt") in msg and url in msg and SHA in msg
    assert not (tmp_path / "cache" / "test.pt").exists()


def test_offline_names_cache_path_and_url(monkeypatch, tmp_path):
    monkeypatch.setitem(dl.ALIASES, "test-ckpt", _alias("http://127.0.0.1:9/test.pt"))
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path))
    monkeypatch.setenv("DIFFVOS_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline") as info:
        dl.resolve_checkpoint("test-ckpt")
    assert str(tmp_path / "test.pt") in str(info.value) and "http://127.0.0.1:9/test.pt" in str(info.value)


def test_resolve_alias_downloads_once_then_uses_cache(server, monkeypatch, tmp_path):
    monkeypatch.setitem(dl.ALIASES, "test-ckpt", _alias(server.url))
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path))
    path = dl.resolve_checkpoint("test-ckpt", offline=False, progress=False)
    assert path == tmp_path / "test.pt" and path.read_bytes() == DATA
    assert (tmp_path / "test.pt.sha256").read_text().strip() == SHA
    again = dl.resolve_checkpoint("test-ckpt", offline=True, progress=False)
    assert again == path and len(server.requests) == 1


def test_resolve_unknown_hash_records_it_with_warning(server, monkeypatch, tmp_path):
    monkeypatch.setitem(dl.ALIASES, "test-ckpt", _alias(server.url, sha=None))
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="no published sha256"):
        dl.resolve_checkpoint("test-ckpt", offline=False, progress=False)
    assert (tmp_path / "test.pt.sha256").read_text().strip() == SHA


def test_cached_file_placed_by_hand_is_hashed(monkeypatch, tmp_path):
    monkeypatch.setitem(dl.ALIASES, "test-ckpt", _alias("http://127.0.0.1:9/test.pt"))
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path))
    bad = bytearray(DATA)
    bad[1000] ^= 1
    (tmp_path / "test.pt").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="expected " + SHA):
        dl.resolve_checkpoint("test-ckpt", offline=True)
    (tmp_path / "test.pt").write_bytes(DATA)
    assert dl.resolve_checkpoint("test-ckpt", offline=True) == tmp_path / "test.pt"


def test_existing_path_returned_as_is_and_unknown_name_refused(tmp_path):
    f = tmp_path / "mine.pt"
    f.write_bytes(b"x")
    assert dl.resolve_checkpoint(str(f), offline=True) == f
    with pytest.raises(CheckpointError, match="adm-256-uncond"):
        dl.resolve_checkpoint(tmp_path / "missing.pt", offline=True)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFVOS_CACHE", str(tmp_path))
    assert dl.cache_dir() == tmp_path
    monkeypatch.delenv("DIFFVOS_CACHE")
    assert dl.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "diffvos"


def test_adm_alias_is_pinned():
    a = dl.ALIASES["adm-256-uncond"]
    assert a.url == "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
    assert a.filename == "256x256_diffusion_uncond.pt"
    assert a.size == 2_211_383_297 and a.sha256 is not None and len(a.sha256) == 64
