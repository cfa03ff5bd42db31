"""The bundle manifest and atomic outputs: round trip, schema checks, corruption, no half-writes."""

from __future__ import annotations

import json

import pytest

from diffvos.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    GraphEntry,
    Manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from diffvos.errors import BundleError, OutputError
from diffvos.io.atomic import prepare_output_dir, staged_directory, write_bytes_atomic


def _bundle(tmp_path, payload=b"graph bytes"):
    (tmp_path / "features.onnx").write_bytes(payload)
    manifest = Manifest(
        backbone="adm", timestep=30, alpha_bar=0.99, layer=6, stride=8, channels=64, ensemble=2,
        height=64, width=96,
        graphs={"features": GraphEntry("features.onnx", sha256_file(tmp_path / "features.onnx"),
                                       {"x_t": [2, 3, 64, 96]}, {"features": [1, 64, 8, 12]})},
    )
    write_manifest(tmp_path, manifest)
    return manifest


def test_round_trip(tmp_path):
    written = _bundle(tmp_path)
    read = read_manifest(tmp_path)
    assert read == written
    assert read.schema_version == SCHEMA_VERSION
    assert read.input_channels == 3


def test_newer_schema_is_refused_with_advice(tmp_path):
    _bundle(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"schema .* upgrade diffvos") as err:
        read_manifest(tmp_path)
    assert MANIFEST_NAME in str(err.value)


def test_corrupted_graph_is_detected(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "features.onnx").write_bytes(b"graph bytez")
    with pytest.raises(BundleError, match="corrupted") as err:
        read_manifest(tmp_path)
    assert "features.onnx" in str(err.value)


def test_missing_graph_and_not_a_bundle(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "features.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        read_manifest(tmp_path)
    with pytest.raises(BundleError, match="not a diffvos bundle"):
        read_manifest(tmp_path / "..")
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nope")


def test_malformed_manifest(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"schema_version": 1, "backbone": "adm"}))
    with pytest.raises(BundleError, match="malformed"):
        read_manifest(tmp_path)


def test_staged_directory_failure_leaves_nothing(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        with staged_directory(out) as stage:
            (stage / "half.onnx").write_bytes(b"x")
            raise RuntimeError("export failed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staged_directory_refuses_non_empty_unless_forced(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old").write_text("keep me")
    with pytest.raises(OutputError, match="--force"):
        with staged_directory(out):
            pass
    assert (out / "old").read_text() == "keep me"
    with staged_directory(out, force=True) as stage:
        (stage / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        prepare_output_dir(f)


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    target = tmp_path / "a.bin"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(OutputError, match="cannot write"):
        write_bytes_atomic(f"{target}/below-a-file", b"x")


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "f.bin", b"x")
        with staged_directory(tmp_path / "d") as stage:
            (stage / "g").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
