"""The C ABI: build libdiffvos.so with the system C compiler, check samples/c/track.c against the
Python API byte for byte, and check that every error crossing the ABI returns its status and a
message without crashing the C host. The status codes live only here, at the C boundary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import diffvos
from diffvos.errors import (
    BackendError,
    BundleError,
    BusyError,
    ClosedError,
    InputError,
    InvalidBufferError,
    NoSuchObjectError,
    NotStartedError,
)
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.capi.status import STATUS_TEXT, Status, status_of
from diffvos.sample_clip import moving_squares

ROOT = Path(__file__).resolve().parents[1]

H, W = 64, 96


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def capi(tmp_path_factory) -> Path:
    """Build the library once; skip with the reason when this machine cannot."""
    try:
        from diffvos.runtime.capi import build
    except ImportError as exc:  # cffi missing
        pytest.skip(f"cannot build the C API: {exc}")
    reason = build.check_toolchain()
    if reason:
        pytest.skip(f"cannot build the C API: {reason}")
    out = tmp_path_factory.mktemp("capi")
    build.build(out)
    return out


def _compile(capi: Path, source: Path, exe: Path) -> Path:
    cmd = [_compiler(), "-std=c99", "-Wall", "-Werror", "-O1", str(source), f"-I{capi}", f"-L{capi}", "-ldiffvos",
           f"-Wl,-rpath,{capi}", "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return exe


def _env(**extra: str) -> dict[str, str]:
    """A host environment without the test's Python settings: the library finds its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("toy"), height=H, width=W)


def _write_clip(folder: Path, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    frames, truths = moving_squares(n)
    folder.mkdir()
    for i, f in enumerate(frames):
        (folder / f"{i:05d}.ppm").write_bytes(b"P6\n%d %d\n255\n" % (W, H) + f[:, :, ::-1].tobytes())
    first = (truths[0] * 3).astype(np.uint8)  # ids 3 and 6
    return frames, first


def _read_pgm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    header = b"P5\n%d %d\n255\n" % (W, H)
    assert data.startswith(header)
    return np.frombuffer(data[len(header):], np.uint8).reshape(H, W)


@pytest.mark.parametrize("rgb", [False, True], ids=["bgr", "rgb"])
def test_c_sample_matches_python_api(capi, bundle, tmp_path, rgb):
    exe = _compile(capi, ROOT / "samples" / "c" / "track.c", tmp_path / "track")
    frames, first = _write_clip(tmp_path / "frames", 6)
    (tmp_path / "mask.pgm").write_bytes(b"P5\n%d %d\n255\n" % (W, H) + first.tobytes())
    (tmp_path / "out").mkdir()
    args = [str(exe), str(bundle), str(tmp_path / "frames"), str(tmp_path / "mask.pgm"), str(tmp_path / "out")]
    done = subprocess.run(args + (["--rgb"] if rgb else []), capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CPUExecutionProvider" in done.stdout or "ExecutionProvider" in done.stdout
    # the same input through the Python API
    session = diffvos.Runtime(bundle).session(W, H)
    expected = [session.step(f, mask=first if i == 0 else None).copy() for i, f in enumerate(frames)]
    for i, want in enumerate(expected):
        got = _read_pgm(tmp_path / "out" / f"{i:05d}.pgm")
        assert got.tobytes() == want.tobytes(), f"frame {i}"
    assert set(np.unique(expected[-1])) <= {0, 3, 6}


def test_status_values_are_stable_and_match_the_header():
    header = (ROOT / "diffvos" / "runtime" / "capi" / "diffvos.h").read_text()
    for st in Status:
        name = "DIFFVOS_OK" if st == Status.OK else f"DIFFVOS_ERR_{st.name}"
        m = re.search(rf"\b{name}\s*=\s*(\d+)", header)
        assert m and int(m.group(1)) == int(st), name
    assert [int(s) for s in Status] == list(range(13)) and set(STATUS_TEXT) == set(Status)


def test_exceptions_map_to_statuses_at_the_boundary():
    cases = {
        InvalidBufferError("b"): Status.BUFFER, InputError("i"): Status.INVALID_ARGUMENT,
        BundleError("b"): Status.BUNDLE, BackendError("b"): Status.BACKEND, NotStartedError("n"): Status.NOT_STARTED,
        NoSuchObjectError("n"): Status.NO_SUCH_OBJECT, BusyError("b"): Status.BUSY,
        ClosedError("c"): Status.INVALID_HANDLE, MemoryError(): Status.OUT_OF_MEMORY,
        ZeroDivisionError(): Status.INTERNAL,
    }
    for exc, status in cases.items():
        assert status_of(exc) == status, exc


ERRORS_C = r"""
#include <stdio.h>
#include <string.h>
#include "diffvos.h"

static void report(const char *what, diffvos_status st)
{
    printf("%s %d %s\n", what, (int)st, diffvos_last_error());
}

int main(int argc, char **argv)
{
    diffvos_runtime *rt = NULL;
    diffvos_session *s = NULL, *gone = NULL;
    uint8_t frame[64 * 96 * 3], labels[64 * 96], out[64 * 96], out2[64 * 96];
    int untouched = 1;
    float probs[3 * 8 * 12];
    const char *text = NULL;
    int32_t n = -1;
    size_t count = 0;
    (void)argc;
    memset(frame, 0, sizeof frame);
    memset(labels, 0, sizeof labels);
    memset(out, 77, sizeof out);
    for (int i = 0; i < 16 * 16; i++) labels[(16 + i / 16) * 96 + 16 + i % 16] = 5;

    report("missing_bundle", diffvos_runtime_create("/nonexistent/bundle", NULL, &rt));
    report("null_bundle", diffvos_runtime_create(NULL, NULL, &rt));
    report("null_out", diffvos_runtime_create(argv[1], NULL, NULL));
    report("runtime_ok", diffvos_runtime_create(argv[1], NULL, &rt));
    report("null_runtime", diffvos_session_create(NULL, 96, 64, NULL, &s));
    report("bad_width", diffvos_session_create(rt, -5, 64, NULL, &s));
    printf("runtime_last_error %s\n", diffvos_runtime_last_error(rt));
    report("session_ok", diffvos_session_create(rt, 96, 64, NULL, &s));
    report("wrong_kind", diffvos_session_track((diffvos_session *)rt, frame, sizeof frame, out, sizeof out, NULL, 0));
    report("not_started", diffvos_session_track(s, frame, sizeof frame, out, sizeof out, NULL, 0));
    report("null_frame", diffvos_session_add_objects(s, NULL, sizeof frame, labels, sizeof labels, NULL, 0));
    report("short_frame", diffvos_session_add_objects(s, frame, sizeof frame - 1, labels, sizeof labels, NULL, 0));
    report("add_ok", diffvos_session_add_objects(s, frame, sizeof frame, labels, sizeof labels, out, sizeof out));
    report("short_out", diffvos_session_track(s, frame, sizeof frame, out, 10, NULL, 0));
    memset(out2, 77, sizeof out2);
    report("short_out_untouched", diffvos_session_track(s, frame, sizeof frame, out2, sizeof out2 - 1, NULL, 0));
    for (size_t i = 0; i < sizeof out2; i++) untouched &= out2[i] == 77;
    printf("out_untouched %d\n", untouched);
    report("probs_wrong_count", diffvos_session_track(s, frame, sizeof frame, out, sizeof out, probs, 5));
    printf("session_error_after_failure %s\n", diffvos_session_last_error(s));
    report("null_session", diffvos_session_track(NULL, frame, sizeof frame, out, sizeof out, NULL, 0));
    report("track_ok", diffvos_session_track(s, frame, sizeof frame, out, sizeof out, probs, 2 * 8 * 12));
    printf("session_last_error %s\n", diffvos_session_last_error(s));
    report("no_such_object", diffvos_session_remove_object(s, 9));
    report("num_objects", diffvos_session_num_objects(s, &n));
    printf("objects %d\n", n);
    report("object_ids_count_only", diffvos_session_object_ids(s, NULL, 0, &count));
    printf("count %d\n", (int)count);
    report("provider", diffvos_runtime_provider(rt, &text));
    printf("provider_name %s\n", text ? text : "(none)");
    report("metadata", diffvos_runtime_metadata_json(rt, &text));
    printf("metadata_has_stride %d\n", text && strstr(text, "\"stride\": 8") != NULL);
    { /* session options: defaults from the library, each string option checked, passed through */
        diffvos_session_options so;
        diffvos_session *s2 = NULL;
        report("session_options_init", diffvos_session_options_init(&so));
        printf("session_defaults 1 %s|%s|%d\n", so.propagation_kernel, so.head_weights, (int)so.inversion_steps);
        so.propagation_kernel = "numpy";
        report("numpy_kernel", diffvos_session_create(rt, 96, 64, &so, &s2));
        report("numpy_add", diffvos_session_add_objects(s2, frame, sizeof frame, labels, sizeof labels, out2, sizeof out2));
        report("numpy_destroy", diffvos_session_destroy(s2));
        so.propagation_kernel = "gpu";
        report("bad_kernel", diffvos_session_create(rt, 96, 64, &so, &s2));
        so.propagation_kernel = NULL;
        so.head_weights = "loudest";
        report("bad_head_weights", diffvos_session_create(rt, 96, 64, &so, &s2));
        so.head_weights = NULL;
        so.inversion_steps = 3;
        report("inversion_without_graph", diffvos_session_create(rt, 96, 64, &so, &s2));
    }
    gone = s;
    report("destroy_ok", diffvos_session_destroy(s));
    report("destroyed_again", diffvos_session_destroy(gone));
    report("destroyed_track", diffvos_session_track(gone, frame, sizeof frame, out, sizeof out, NULL, 0));
    printf("destroyed_last_error %s\n", diffvos_session_last_error(gone));
    report("runtime_destroy_ok", diffvos_runtime_destroy(rt));
    report("runtime_destroyed_again", diffvos_runtime_destroy(rt));
    printf("status_string %s\n", diffvos_status_string(DIFFVOS_ERR_BUSY));
    printf("api_version %d\n", (int)diffvos_api_version());
    if (argc > 2) { /* a bundle whose INT8 calibration failed its gate: refused unless allowed */
        diffvos_runtime_options o;
        report("options_init", diffvos_runtime_options_init(&o));
        printf("allow_failed_default %d\n", (int)o.allow_failed_calibration);
        report("failed_refused", diffvos_runtime_create(argv[2], &o, &rt));
        o.allow_failed_calibration = 1;
        report("failed_allowed", diffvos_runtime_create(argv[2], &o, &rt));
        report("failed_destroy", diffvos_runtime_destroy(rt));
    }
    printf("done\n");
    return 0;
}
"""


def _run_errors(capi: Path, bundle: Path, tmp_path: Path, *more: Path, **env: str) -> dict[str, tuple[int, str]]:
    src = tmp_path / "errors.c"
    src.write_text(ERRORS_C)
    exe = _compile(capi, src, tmp_path / "errors")
    done = subprocess.run([str(exe), str(bundle), *map(str, more)], capture_output=True, text=True, env=_env(**env),
                          timeout=120)
    assert done.returncode == 0, f"the C host crashed or failed: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    rows = {}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition(" ")
        code, _, message = rest.partition(" ")
        rows[name] = (int(code), message) if code.lstrip("-").isdigit() else (0, rest)
    return rows


def _failed_bundle(folder: Path) -> Path:
    """A toy bundle marked as calibrated and failed (the runtime must refuse it by default)."""
    from diffvos.bundle import Calibration, read_manifest, write_manifest

    out = make_toy_bundle(folder, height=H, width=W)
    m = read_manifest(out)
    m.calibration = Calibration(method="entropy", calibration_frames=4, heldout_frames=2, sources=[], seed=0,
                                fresh_noise=False, chosen={}, candidates=[], accuracy={}, limits={}, passed=False,
                                failures=["surf: mask IoU vs FP32 0.9700 < 0.9800, short by 0.0100"])
    write_manifest(out, m)
    return out


def test_errors_cross_the_abi_as_statuses(capi, bundle, tmp_path):
    r = _run_errors(capi, bundle, tmp_path, _failed_bundle(tmp_path / "failed"))
    expect = {
        "missing_bundle": Status.BUNDLE, "null_bundle": Status.NULL_HANDLE, "null_out": Status.NULL_HANDLE,
        "runtime_ok": Status.OK, "null_runtime": Status.NULL_HANDLE, "bad_width": Status.INVALID_ARGUMENT,
        "session_ok": Status.OK, "wrong_kind": Status.INVALID_HANDLE, "not_started": Status.NOT_STARTED,
        "null_frame": Status.BUFFER, "short_frame": Status.BUFFER, "add_ok": Status.OK,
        "short_out": Status.BUFFER, "probs_wrong_count": Status.BUFFER, "null_session": Status.NULL_HANDLE,
        "track_ok": Status.OK, "no_such_object": Status.NO_SUCH_OBJECT, "num_objects": Status.OK,
        "object_ids_count_only": Status.OK, "provider": Status.OK, "metadata": Status.OK,
        "destroy_ok": Status.OK, "destroyed_again": Status.INVALID_HANDLE,
        "destroyed_track": Status.INVALID_HANDLE, "runtime_destroy_ok": Status.OK,
        "runtime_destroyed_again": Status.INVALID_HANDLE, "options_init": Status.OK,
        "failed_refused": Status.BUNDLE, "failed_allowed": Status.OK, "failed_destroy": Status.OK,
        "session_options_init": Status.OK, "numpy_kernel": Status.OK, "numpy_add": Status.OK,
        "numpy_destroy": Status.OK, "bad_kernel": Status.INVALID_ARGUMENT, "bad_head_weights": Status.INVALID_ARGUMENT,
        "inversion_without_graph": Status.INVALID_ARGUMENT,
    }
    for name, status in expect.items():
        code, message = r[name]
        assert code == int(status), f"{name}: got {code} ({message}), expected {status.name}"
        if status != Status.OK:
            assert message.strip(), f"{name}: no message"
    assert "does not exist" in r["missing_bundle"][1]
    assert "frame has 18431 bytes" in r["short_frame"][1]
    assert "destroyed" in r["destroyed_again"][1]
    assert "width" in r["runtime_last_error"][1]
    assert r["session_error_after_failure"][1].strip() == \
        "diffvos_session_track: out_probs has 5 elements, expected 192 for shape (2, 8, 12)"
    # a success clears both last errors (documented in diffvos.h, ERRORS)
    assert r["session_last_error"][1] == ""
    for name, status in expect.items():
        if status == Status.OK:
            assert r[name][1] == "", f"{name}: diffvos_last_error() after a success: {r[name][1]!r}"
    assert r["short_out_untouched"][0] == int(Status.BUFFER) and r["out_untouched"] == (1, "")
    assert r["objects"] == (1, "") and r["count"] == (1, "")
    assert r["provider_name"][1] == "CPUExecutionProvider" or r["provider_name"][1].endswith("ExecutionProvider")
    assert r["metadata_has_stride"] == (1, "")
    assert r["status_string"][1] == STATUS_TEXT[Status.BUSY]
    assert r["api_version"] == (2, "")
    assert r["allow_failed_default"] == (0, "") and "short by 0.0100" in r["failed_refused"][1]
    assert r["session_defaults"] == (1, "graph|uniform|0")  # the config's defaults (test_config checks the header)
    assert "propagation_kernel" in r["bad_kernel"][1] and "gpu" in r["bad_kernel"][1]
    assert "head_weights" in r["bad_head_weights"][1]
    assert "noise" in r["inversion_without_graph"][1]
    assert "done" in r


def test_python_that_cannot_start_is_a_status(capi, bundle, tmp_path):
    """A broken embedded Python gives DIFFVOS_ERR_RUNTIME and a message, not an exit()."""
    r = _run_errors(capi, bundle, tmp_path, DIFFVOS_PYTHONHOME=str(tmp_path / "no-python-here"))
    code, message = r["runtime_ok"]
    assert code == int(Status.RUNTIME) and "could not start" in message
    assert r["status_string"][1] == STATUS_TEXT[Status.BUSY]  # C-only functions still answer
