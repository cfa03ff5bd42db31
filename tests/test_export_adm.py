"""`diffvos export adm` end to end on the tiny ADM fixture, and every export error path."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from diffvos.bundle import read_manifest  # noqa: E402
from diffvos.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _export(fixture, out, *extra):
    return main([
        "export", "adm", "--checkpoint", str(fixture / "adm_tiny_state_dict.pt"),
        "--model-config", str(fixture / "adm_tiny_config.json"),
        "--timestep", "30", "--layer", "6", "--height", "64", "--width", "96", "--ensemble", "2",
        "--output", str(out), *extra,
    ])


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, adm_fixture_dir, torch_one_thread):
    out = tmp_path_factory.mktemp("bundles") / "adm_tiny"
    assert _export(adm_fixture_dir, out) == 0
    return out


def test_bundle_reproduces_golden_block_6(tiny_bundle, adm_fixture_dir):
    import onnxruntime as ort

    golden = np.load(adm_fixture_dir / "adm_tiny_golden.npz")
    m = read_manifest(tiny_bundle)
    session = ort.InferenceSession(str(tiny_bundle / m.graphs["features"].file), providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"x_t": golden["x_t"]})[0]
    ref = golden["output_block_6_ensemble_mean"]
    assert got.shape == ref.shape == (1, 64, 8, 12)
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-4


def test_manifest_records_what_the_runtime_needs(tiny_bundle, adm_fixture_dir):
    golden = np.load(adm_fixture_dir / "adm_tiny_golden.npz")
    m = read_manifest(tiny_bundle)
    assert (m.backbone, m.timestep, m.layer, m.stride, m.channels, m.ensemble) == ("adm", 30, 6, 8, 64, 2)
    assert (m.height, m.width, m.dynamic) == (64, 96, False)
    assert m.alpha_bar == pytest.approx(float(golden["alphas_cumprod"][30]), rel=1e-12)
    # a stream axis: B streams of E=2 draws in, B feature maps out (B up to the ADM default, 2)
    assert m.graphs["features"].inputs == {"x_t": ["draws", 3, 64, 96]}
    assert m.graphs["features"].outputs == {"features": ["streams", 64, 8, 12]}
    assert (m.streams.max_streams, m.streams.opt_streams) == (2, 2)
    v = m.export.verification["features"]  # verified against PyTorch stream by stream, on 2 streams
    assert v.cosine > 0.9999 and v.max_rel_error < 1e-4 and v.input_shape == [4, 3, 64, 96]
    assert m.checkpoint.sha256 and m.checkpoint.config["num_channels"] == 32
    assert 0 < m.flops.truncated < m.flops.full
    assert {"torch", "onnx", "onnxruntime", "diffvos"} <= set(m.versions)


def test_time_embedding_is_folded_away(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "features.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Sin", "Cos"}, "the sinusoidal time embedding must be a constant"
    # nothing of the time MLP or of later decoder blocks / the output head survives
    names = " ".join(i.name for i in model.graph.initializer)
    assert "time_embed" not in names and "emb_layers" not in names and "out.2" not in names
    assert not any(f"output_blocks.{i}." in names for i in range(7, 18))


def test_missing_checkpoint(tmp_path, adm_fixture_dir, capsys):
    rc = main(["export", "adm", "--checkpoint", str(tmp_path / "nope.pt"), "--model-config",
               str(adm_fixture_dir / "adm_tiny_config.json"), "--height", "64", "--width", "96",
               "--output", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "nope.pt" in err and "not found" in err
    assert not (tmp_path / "out").exists()


def test_unreadable_checkpoint(tmp_path, adm_fixture_dir, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a torch file")
    rc = main(["export", "adm", "--checkpoint", str(bad), "--model-config",
               str(adm_fixture_dir / "adm_tiny_config.json"), "--height", "64", "--width", "96",
               "--output", str(tmp_path / "out")])
    assert rc == 1 and "garbage.pt" in capsys.readouterr().err


def test_checkpoint_with_wrong_keys_lists_them(tmp_path, adm_fixture_dir, capsys):
    state = torch.load(adm_fixture_dir / "adm_tiny_state_dict.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["out.2.bias"]
    bad = tmp_path / "renamed.pt"
    torch.save(state, bad)
    rc = main(["export", "adm", "--checkpoint", str(bad), "--model-config",
               str(adm_fixture_dir / "adm_tiny_config.json"), "--height", "64", "--width", "96",
               "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "renamed.pt" in err
    assert "out.2.bias" in err and "extra.weight" in err


def test_layer_out_of_range_lists_layers(tmp_path, adm_fixture_dir, capsys):
    rc = main(["export", "adm", "--checkpoint", str(adm_fixture_dir / "adm_tiny_state_dict.pt"),
               "--model-config", str(adm_fixture_dir / "adm_tiny_config.json"), "--layer", "18",
               "--height", "64", "--width", "96", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "0..17" in err
    assert "6: stride 8, 64 ch" in err and "17: stride 1, 32 ch" in err


def test_size_not_multiple_of_stride(tmp_path, adm_fixture_dir, capsys):
    rc = main(["export", "adm", "--checkpoint", str(adm_fixture_dir / "adm_tiny_state_dict.pt"),
               "--model-config", str(adm_fixture_dir / "adm_tiny_config.json"),
               "--height", "60", "--width", "96", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "height=60" in err and "32" in err


def test_existing_output_refused_without_force(tmp_path, adm_fixture_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    assert _export(adm_fixture_dir, out) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"


def test_failed_verification_leaves_no_bundle(tmp_path, adm_fixture_dir, monkeypatch, capsys):
    from diffvos.export import onnx_export

    monkeypatch.setattr(onnx_export, "DEFAULT_TOLERANCE", {"max_rel_error": 0.0, "min_cosine": 1.1})
    out = tmp_path / "out"
    assert _export(adm_fixture_dir, out) == 1
    assert "disagrees with PyTorch" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_dynamic_export_runs_at_another_size(tmp_path, adm_fixture_dir):
    import onnxruntime as ort

    out = tmp_path / "dyn"
    assert _export(adm_fixture_dir, out, "--dynamic", "--no-verify") == 0
    m = read_manifest(out)
    assert m.dynamic and m.height is None and m.min_size and m.max_size
    session = ort.InferenceSession(str(out / "features.onnx"), providers=["CPUExecutionProvider"])
    feats = session.run(None, {"x_t": np.zeros((2, 3, 96, 64), np.float32)})[0]
    assert feats.shape == (1, 64, 12, 8)
    assert json.loads((out / "diffvos.json").read_text())["export"]["verification"] == {}  # --no-verify
