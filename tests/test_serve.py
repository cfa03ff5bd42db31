"""Serving on Triton: a real ``tritonserver`` (the binary in the nvidia-pytriton wheel) on
127.0.0.1 with free ports, serving a repository written by ``export_triton`` for the toy bundle.
Masks are checked against the in-process API (``Session.step``) on the same frames; bad requests
get their own error and leave the other streams as they were. The stream table's logic (bounds,
idle eviction with an injected clock) is also tested in process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import diffvos
from diffvos.export.toy import make_toy_bundle
from diffvos.sample_clip import moving_squares
from diffvos.serve import protocol as P
from diffvos.serve.repository import ServeOptions, export_triton
from diffvos.serve.streams import RequestError, StreamTable, TrackRequest

tritonclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install 'diffvos[serve]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

from diffvos.serve.client import StreamClient  # noqa: E402
from diffvos.serve.server import ServerError, TritonServer, free_ports, triton_dist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96
IDLE_S = 2.0
OBJECTS = (
    (1, (0, 0, 255), (8, 8), (0, 2), 20, 0),
    (2, (255, 200, 0), (36, 70), (0, -2), 20, 0),
    (3, (200, 0, 200), (40, 10), (-1, 1), 14, 4),
)


def _clip(k: int, n: int = 10):
    objs = tuple((oid, c, (y + k, x + 2 * k), d, size, start) for oid, c, (y, x), d, size, start in OBJECTS)
    return moving_squares(n, H, W, objects=objs)


def _first(truth):
    return np.where(truth <= 2, truth, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "toy", height=H, width=W, alpha_bar=0.9, ensemble=2,
                           max_streams=4)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    try:
        triton_dist()
    except ServerError as exc:
        pytest.skip(str(exc))
    repo = tmp_path_factory.mktemp("repo") / "repository"
    export_triton(bundle, repo, ServeOptions(max_streams=3, idle_timeout_s=IDLE_S, max_pixels=200 * 200, max_batch=4,
                                             backend="cpu", threads=1))
    with TritonServer(repo, exit_timeout_s=1) as srv:
        yield srv
        print(srv.log_tail(1500))


class Reference:
    """The same stream in process: Session.step on a runtime of the same bundle."""

    def __init__(self, bundle):
        self.runtime = diffvos.Runtime(bundle, backend="cpu")
        self.session = self.runtime.session(W, H)

    def step(self, frame, mask=None, object_ids=None, remove=()):
        for o in remove:
            self.session.remove(o)
        return self.session.step(frame, mask=mask, object_ids=object_ids).copy()


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_two_interleaved_streams_equal_the_in_process_api(server, bundle):
    """Stream A over gRPC (an object added mid-video), stream B over HTTP (an object removed),
    their requests interleaved: every mask equals the in-process API's."""
    (fa, ta), (fb, tb) = _clip(0), _clip(3)
    a = StreamClient(server.grpc_url, "camera-A", "grpc")
    b = StreamClient(server.url, 42, "http")
    ra, rb = Reference(bundle), Reference(bundle)
    for t in range(8):
        add = np.where(ta[t] == 3, 3, 0).astype(np.uint8) if t == 4 else None
        got_a = a.step(fa[t], mask=_first(ta[0]) if t == 0 else add, object_ids=[3] if t == 4 else None)
        want_a = ra.step(fa[t], mask=_first(ta[0]) if t == 0 else add, object_ids=[3] if t == 4 else None)
        np.testing.assert_array_equal(got_a.labels, want_a, err_msg=f"stream A, frame {t}")
        remove = [2] if t == 5 else []
        got_b = b.step(fb[t], mask=_first(tb[0]) if t == 0 else None, remove=remove, end=t == 7)
        np.testing.assert_array_equal(got_b.labels, rb.step(fb[t], mask=_first(tb[0]) if t == 0 else None,
                                                            remove=remove), err_msg=f"stream B, frame {t}")
        assert got_a.frames == got_b.frames == t + 1
    assert got_a.objects == [1, 2, 3] and 3 in got_a.labels and got_b.objects == [1]
    assert a.end().labels.shape == (0, 0)


def test_bad_requests_get_clear_errors_and_leave_other_streams_alone(server, bundle):
    frames, truths = _clip(1)
    good = StreamClient(server.grpc_url, "good", "grpc")
    ref = Reference(bundle)
    np.testing.assert_array_equal(good.step(frames[0], mask=_first(truths[0])).labels,
                                  ref.step(frames[0], mask=_first(truths[0])))
    other = StreamClient(server.url, "other", "http")
    other.step(frames[0], mask=_first(truths[0]))

    def expect(call, status, text):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert status in _status(info.value) and text in info.value.message(), (info.value.status(),
                                                                                 info.value.message())

    # a stream id never started: Triton's own sequence check
    expect(lambda: StreamClient(server.url, "never", "http").step(frames[1], start=False), "400", "START")
    # malformed frames: 4 channels (Triton's shape check), float pixels (Triton's type check)
    expect(lambda: other.step(np.zeros((H, W, 4), np.uint8)), "400", "unexpected shape")
    with pytest.raises(InferenceServerException, match="FP32|UINT8"):
        tc = other.tc
        x = tc.InferInput(P.FRAME, [1, H, W, 3], "FP32")
        x.set_data_from_numpy(np.zeros((1, H, W, 3), np.float32))
        other.client.infer(P.MODEL_NAME, [x], sequence_id="other")
    # a frame of another size than the stream's, and a frame above max_pixels (the model's checks)
    expect(lambda: other.step(np.zeros((H, W + 8, 3), np.uint8)), "400", "the stream started at 96x64")
    expect(lambda: StreamClient(server.grpc_url, "huge", "grpc").step(np.zeros((300, 300, 3), np.uint8),
                                                                      mask=np.ones((300, 300), np.uint8)),
           "INVALID_ARGUMENT", "exceeds this server's max_pixels (40000)")
    expect(lambda: other.step(frames[1], remove=[9]), "400", "cannot remove object(s) [9]")
    # one stream too many (3 are allowed: good, other, and a third)
    third = StreamClient(server.url, "third", "http")
    third.step(frames[0], mask=_first(truths[0]))
    expect(lambda: StreamClient(server.url, "fourth", "http").step(frames[0], mask=_first(truths[0])), "503",
           "too many open streams (3)")
    third.end()
    # the good stream went on untouched, frame after frame
    for t in range(1, 5):
        np.testing.assert_array_equal(good.step(frames[t]).labels, ref.step(frames[t]), err_msg=f"frame {t}")
    assert good.step(frames[5], end=True).frames == 6
    other.end()


def test_concurrent_streams_are_batched_and_equal(server, bundle):
    """Four streams from four threads: Triton batches them (fewer executions than requests) and
    every mask still equals the in-process API's."""
    before = _metric(server, "nv_inference_exec_count"), _metric(server, "nv_inference_count")
    got, errors = {}, []

    def run(k):
        try:
            frames, truths = _clip(k)
            c = StreamClient(server.grpc_url, f"batch-{k}", "grpc")
            got[k] = [c.step(frames[t], mask=_first(truths[0]) if t == 0 else None, end=t == 9).labels
                      for t in range(10)]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # 3 streams at most on this server: run 3 at once
    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    execs = _metric(server, "nv_inference_exec_count") - before[0]
    count = _metric(server, "nv_inference_count") - before[1]
    assert count == 30 and execs <= count
    print(f"30 requests in {execs} executions (mean batch {count / execs:.2f})")
    for k in range(3):
        frames, truths = _clip(k)
        ref = Reference(bundle)
        for t in range(10):
            np.testing.assert_array_equal(got[k][t], ref.step(frames[t], mask=_first(truths[0]) if t == 0 else None))


def test_client_disconnect_mid_stream_then_idle_expiry(server, bundle):
    """A client killed while streaming leaves the server serving the others; its stream expires
    after the idle timeout (its next request must start again)."""
    code = f"""
import numpy as np, sys
sys.path.insert(0, {str(ROOT)!r})
from diffvos.serve.client import StreamClient
from diffvos.sample_clip import moving_squares
frames, truths = moving_squares(200, {H}, {W})
c = StreamClient({server.grpc_url!r}, "orphan", "grpc")
c.step(frames[0], mask=truths[0])
print("started", flush=True)
for t in range(1, 100000):
    c.step(frames[t % 200])
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "started"
        time.sleep(0.5)
    finally:
        p.kill()
        p.wait(10)
    frames, truths = _clip(2)
    alive = StreamClient(server.url, "alive", "http")
    ref = Reference(bundle)
    for t in range(3):
        np.testing.assert_array_equal(alive.step(frames[t], mask=_first(truths[0]) if t == 0 else None).labels,
                                      ref.step(frames[t], mask=_first(truths[0]) if t == 0 else None))
    time.sleep(IDLE_S + 1.5)
    with pytest.raises(InferenceServerException, match="START"):
        StreamClient(server.url, "orphan", "http").step(frames[0], start=False)
    with urllib.request.urlopen(f"http://{server.url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200


def _metric(server, family: str, model: str = P.MODEL_NAME) -> float:
    with urllib.request.urlopen(f"http://{server.host}:{server.ports.metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(family + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {family} for {model} in /metrics")


def test_health_and_prometheus_metrics_come_from_the_server(server):
    with urllib.request.urlopen(f"http://{server.url}/v2/models/{P.MODEL_NAME}/ready", timeout=5) as r:
        assert r.status == 200
    assert _metric(server, "nv_inference_request_success") > 0


# -- the repository and the CLI ---------------------------------------------------------------------


def test_export_triton_writes_a_self_contained_repository(bundle, tmp_path):
    out = tmp_path / "repo"
    r = subprocess.run([sys.executable, "-m", "diffvos", "export-triton", "--bundle", str(bundle), "--output", str(out),
                        "--max-streams", "5", "--idle-timeout", "7", "--session-options", '{"memory": 3}'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    config = (out / P.MODEL_NAME / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    idle = re.search(r"max_sequence_idle_microseconds: (\d+)", config)  # --idle-timeout 7 (s), in µs
    assert idle is not None and int(idle.group(1)) == 7_000_000
    assert 'key: "max_streams" value: { string_value: "5" }' in config and '\\"memory\\": 3' in config
    assert 'key: "bundle" value: { string_value: "bundle" }' in config
    assert "TritonPythonModel" in (out / P.MODEL_NAME / "1" / "model.py").read_text()
    assert diffvos.Runtime(out / P.MODEL_NAME / "1" / "bundle", backend="cpu").manifest.streams.max_streams == 4
    again = subprocess.run([sys.executable, "-m", "diffvos", "export-triton", "--bundle", str(bundle), "--output",
                            str(out)], capture_output=True, text=True)
    assert again.returncode == 1 and "not empty" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "diffvos", "export-triton", "--bundle", str(bundle), "--output",
                          str(tmp_path / "r2"), "--session-options", '{"memry": 3}'], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown session option(s) memry" in bad.stderr


def test_serve_command_starts_serves_and_stops_cleanly(bundle, tmp_path):
    try:
        triton_dist()
    except ServerError as exc:
        pytest.skip(str(exc))
    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "diffvos", "serve", "--bundle", str(bundle), "--http-port", str(http),
                          "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--backend", "cpu",
                          "--max-streams", "2", "--exit-timeout", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert "serving model 'diffvos_tracker'" in line, line + p.stdout.read()[-2000:] if p.poll() else line
        frames, truths = moving_squares(3, H, W)
        c = StreamClient(f"127.0.0.1:{grpc}", 1, "grpc")
        ref = Reference(bundle)
        for t in range(3):
            np.testing.assert_array_equal(c.step(frames[t], mask=truths[0] if t == 0 else None).labels,
                                          ref.step(frames[t], mask=truths[0] if t == 0 else None))
    finally:
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=60)[0]
    assert p.returncode == 0, out[-2000:]
    assert not [x for x in tmp_path.iterdir() if x.name.startswith("diffvos-")], "temporary folders left behind"
    # a port that is taken: the server fails fast with a clear error
    import socket

    taken = free_ports(1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "diffvos", "serve", "--bundle", str(bundle), "--http-port", str(taken),
                            "--grpc-port", str(grpc), "--metrics-port", str(metrics)], capture_output=True, text=True,
                           timeout=60, env=env)
    assert r.returncode == 1 and "already in use" in r.stderr and time.monotonic() - t0 < 30, r.stderr[-1000:]


# -- the stream table, in process ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stream_table_bounds_evicts_and_isolates(bundle):
    frames, truths = _clip(0)
    clock = Clock()
    with diffvos.Runtime(bundle, backend="cpu") as rt:
        table = StreamTable(rt, max_streams=2, idle_timeout_s=5, max_pixels=10_000, clock=clock)
        r = table.handle([TrackRequest("a", start=True, frame=frames[0], mask=_first(truths[0])),
                          TrackRequest("b", start=True, frame=frames[0], mask=_first(truths[0])),
                          TrackRequest("c", start=True, frame=frames[0], mask=_first(truths[0]))])
        assert [type(x).__name__ for x in r] == ["TrackReply", "TrackReply", "RequestError"]
        assert r[2].kind == P.UNAVAILABLE and table.open_streams == 2
        # the same stream twice in one batch: served in order
        r = table.handle([TrackRequest("a", frame=frames[1]), TrackRequest("a", frame=frames[2]),
                          TrackRequest("zzz", frame=frames[1])])
        assert (r[0].frames, r[1].frames) == (2, 3) and r[2].kind == P.NOT_FOUND
        clock.now = 4.0
        table.handle([TrackRequest("a", frame=frames[3])])
        clock.now = 6.5  # b idle 6.5 s > 5 s + margin; a idle 2.5 s
        assert table.evict_idle() == 1 and table.open_streams == 1
        r = table.handle([TrackRequest("b", frame=frames[1])])
        assert isinstance(r[0], RequestError) and "idle for more than 5 s" in str(r[0])
        r = table.handle([TrackRequest("a", end=True)])
        assert r[0].labels.shape == (0, 0) and table.open_streams == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_sample_streams_a_video_and_writes_the_masks_of_diffvos_track(server, bundle, tmp_path, protocol):
    from diffvos.sample_clip import make_clip

    frames, mask = make_clip(tmp_path / "clip", frames=5, height=120, width=160)
    url = server.grpc_url if protocol == "grpc" else server.url
    r = subprocess.run([sys.executable, str(ROOT / "samples" / "triton" / "stream_video.py"), "--url", url, "--protocol",
                        protocol, "--input", str(frames), "--mask", str(mask), "--output", str(tmp_path / "served"),
                        "--stream-id", f"sample-{protocol}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    local = subprocess.run([sys.executable, "-m", "diffvos", "track", "--bundle", str(bundle), "-i", str(frames), "-m",
                            str(mask), "-o", str(tmp_path / "local"), "--backend", "cpu", "--no-progress"],
                           capture_output=True, text=True)
    assert local.returncode == 0, local.stderr
    from diffvos.io.masks import read_label_map

    served = sorted((tmp_path / "served").glob("*.png"))
    assert [p.name for p in served] == [p.name for p in sorted((tmp_path / "local").glob("*.png"))] and len(served) == 5
    for p in served:
        np.testing.assert_array_equal(read_label_map(p)[0], read_label_map(tmp_path / "local" / p.name)[0])
