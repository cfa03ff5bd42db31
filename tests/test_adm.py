"""ADM U-Net: state-dict layout vs the public checkpoint's manifest, numerics vs the reference
implementation's golden outputs, the folded/truncated export graph, FLOP counts and the schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffvos.bundle.schedules import linear_alphas_cumprod  # noqa: E402
from diffvos.errors import CheckpointError, ExportError, InputError  # noqa: E402
from diffvos.export.adm import (  # noqa: E402
    ADMConfig,
    ADMUNet,
    TruncatedADM,
    count_parameters,
    load_adm,
)
from diffvos.export.flops import count_flops  # noqa: E402


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def golden(adm_fixture_dir: Path):
    return dict(np.load(adm_fixture_dir / "adm_tiny_golden.npz"))


@pytest.fixture(scope="module")
def tiny_config(adm_fixture_dir: Path) -> ADMConfig:
    return ADMConfig.from_json(adm_fixture_dir / "adm_tiny_config.json")


@pytest.fixture(scope="module")
def tiny(adm_fixture_dir: Path, tiny_config: ADMConfig) -> ADMUNet:
    return load_adm(adm_fixture_dir / "adm_tiny_state_dict.pt", tiny_config)


@pytest.fixture(scope="module")
def tiny_run(tiny: ADMUNet, golden) -> dict:
    """One full forward of the fixture input, keeping every output block's ensemble mean."""
    seen: dict = {}
    hooks = [
        b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o.mean(0, keepdim=True).numpy()))
        for i, b in enumerate(tiny.output_blocks)
    ]
    try:
        with torch.no_grad():
            seen["out"] = tiny(torch.from_numpy(golden["x_t"]), torch.full((2,), int(golden["t"]))).numpy()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.fixture(scope="module")
def meta_adm256() -> ADMUNet:
    with torch.device("meta"):
        return ADMUNet(ADMConfig())


# --- configuration ------------------------------------------------------------------------------


def test_tiny_config_reads_as_is(tiny_config: ADMConfig, adm_fixture_dir: Path):
    raw = json.loads((adm_fixture_dir / "adm_tiny_config.json").read_text())
    assert tiny_config.num_channels == 32 and tiny_config.num_head_channels == 16
    assert tiny_config.channel_mult == (1, 1, 2, 2, 4, 4)
    assert tiny_config.extras == {"t": raw["t"], "ensemble": raw["ensemble"], "input_hw": raw["input_hw"]}
    assert ADMConfig.from_dict(tiny_config.to_dict()) == tiny_config
    assert json.loads(json.dumps(tiny_config.to_dict()))["channel_mult"] == [1, 1, 2, 2, 4, 4]


def test_flag_string_form_is_accepted():
    cfg = ADMConfig.from_dict({"attention_resolutions": "32,16,8", "channel_mult": "1,1,2,2,4,4", "use_fp16": True})
    assert cfg == ADMConfig()
    assert cfg.attention_strides == {8, 16, 32}


@pytest.mark.parametrize(
    "content, words",
    [
        ({"num_channels": 32, "bogus_field": 1}, ["bogus_field", "unknown"]),
        ({"num_channels": "wide"}, ["num_channels"]),
        ({"channel_mult": "1,x"}, ["channel_mult"]),
        ({"num_channels": 48}, ["multiples of 32"]),
        ({"class_cond": True}, ["class-conditional"]),
        ({"learn_sigma": "yes"}, ["learn_sigma"]),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, content, words):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError) as info:
        ADMConfig.from_json(path)
    assert str(path) in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_config_file_problems(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        ADMConfig.from_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{num_channels: 3")
    with pytest.raises(InputError, match="not valid JSON"):
        ADMConfig.from_json(bad)


# --- architecture -------------------------------------------------------------------------------


def test_default_model_matches_public_checkpoint_manifest(meta_adm256: ADMUNet, adm_fixture_dir: Path):
    manifest = json.loads((adm_fixture_dir / "adm256_uncond_state_dict_manifest.json").read_text())
    ours = [(k, list(v.shape)) for k, v in meta_adm256.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in manifest["tensors"]]
    assert len(ours) == 566
    assert sum(p.numel() for p in meta_adm256.parameters()) == manifest["num_parameters"] == 552_814_086


def test_layer_table(meta_adm256: ADMUNet, tiny: ADMUNet, golden):
    assert meta_adm256.total_stride == 32
    table = meta_adm256.layer_table(480, 832)
    assert len(table) == 18
    assert [r["stride"] for r in table] == [32, 32, 16, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1, 1]
    assert table[6] == {"layer": 6, "stride": 8, "channels": 512, "height": 60, "width": 104}
    tiny_table = tiny.layer_table(64, 96)
    for row in tiny_table:  # agrees with the reference outputs' shapes
        assert golden[f"output_block_{row['layer']}_ensemble_mean"].shape == (1, row["channels"], row["height"], row["width"])
    with pytest.raises(ExportError, match="multiples of the total stride 32"):
        meta_adm256.layer_table(480, 850)


def test_every_output_block_matches_reference(tiny_run, golden):
    errors = [rel_err(tiny_run[i], golden[f"output_block_{i}_ensemble_mean"]) for i in range(18)]
    assert all(tiny_run[i].shape == golden[f"output_block_{i}_ensemble_mean"].shape for i in range(18))
    assert max(errors) <= 1e-4, errors


def test_full_forward_matches_reference(tiny_run, golden):
    assert tiny_run["out"].shape == (2, 6, 64, 96)
    assert rel_err(tiny_run["out"], golden["model_output"]) <= 1e-4


def test_decoder_features_runs_only_to_its_layer(tiny: ADMUNet, golden):
    x = torch.from_numpy(golden["x_t"])
    calls = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(tiny.output_blocks)]
    try:
        with torch.no_grad():
            feats = tiny.decoder_features(x, 30, 6).mean(0, keepdim=True)
    finally:
        for h in hooks:
            h.remove()
    assert calls == list(range(7))
    assert rel_err(feats, golden["output_block_6_ensemble_mean"]) <= 1e-4


def test_bad_layer_and_size(tiny: ADMUNet):
    x = torch.zeros(1, 3, 64, 96)
    with pytest.raises(ExportError, match="0..17"):
        tiny.decoder_features(x, 30, 18)
    with pytest.raises(ExportError, match="multiples"):
        tiny.decoder_features(torch.zeros(1, 3, 60, 96), 30, 3)


# --- loading ------------------------------------------------------------------------------------


def test_load_adm_wrapped_and_eval(tmp_path: Path, tiny: ADMUNet, tiny_config: ADMConfig):
    assert not tiny.training
    path = tmp_path / "wrapped.pt"
    torch.save({"model": tiny.state_dict(), "step": 3}, path)
    loaded = load_adm(path, tiny_config)
    assert not loaded.training
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_load_adm_errors(tmp_path: Path, tiny: ADMUNet, tiny_config: ADMConfig):
    with pytest.raises(CheckpointError, match="checkpoint not found") as info:
        load_adm(tmp_path / "none.pt", tiny_config)
    assert "none.pt" in str(info.value)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read") as info:
        load_adm(junk, tiny_config)
    assert "junk.pt" in str(info.value)

    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_adm(listed, tiny_config)

    state = dict(tiny.state_dict())
    del state["out.2.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["input_blocks.0.0.bias"] = torch.zeros(7)
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(CheckpointError) as info:
        load_adm(broken, tiny_config)
    msg = str(info.value)
    assert "broken.pt" in msg and "missing tensors 1: out.2.bias" in msg
    assert "unexpected tensors 1: extra.weight" in msg and "input_blocks.0.0.bias (7,)" in msg


def test_tiny_checkpoint_with_default_config_lists_many(adm_fixture_dir: Path):
    with pytest.raises(CheckpointError, match=r"shape mismatches \d+: .*more\)"):
        load_adm(adm_fixture_dir / "adm_tiny_state_dict.pt")


# --- truncated, time-folded graph --------------------------------------------------------------


@pytest.mark.parametrize("layer", [0, 6, 17])
def test_truncated_equals_decoder_features(tiny: ADMUNet, tiny_run, golden, layer: int):
    x = torch.from_numpy(golden["x_t"])
    trunc = TruncatedADM(tiny, 30, layer)
    with torch.no_grad():
        got = trunc(x).numpy()
        # decoder_features itself for the reference layer; the full run's block outputs otherwise
        ref = tiny.decoder_features(x, 30, layer).mean(0, keepdim=True).numpy() if layer == 6 else tiny_run[layer]
    assert got.shape == ref.shape and rel_err(got, ref) <= 1e-5
    assert (trunc.stride, trunc.channels) == (tiny.layer_table(64, 96)[layer]["stride"], ref.shape[1])


def test_folded_constants_carry_the_time_step(tiny: ADMUNet, golden):
    x = torch.from_numpy(golden["x_t"][:, :, :32, :32])
    with torch.no_grad():
        a30 = TruncatedADM(tiny, 30, 0)(x)
        b30 = tiny.decoder_features(x, 30, 0).mean(0, keepdim=True)
        b31 = tiny.decoder_features(x, 31, 0).mean(0, keepdim=True)
    assert rel_err(a30, b30) <= 1e-5 < rel_err(b31, b30)


def test_truncated_holds_only_what_it_needs(tiny: ADMUNet, meta_adm256: ADMUNet):
    trunc = TruncatedADM(tiny, 30, 6)
    names = list(trunc.state_dict())
    assert not any(n.startswith(("time_embed", "out.")) or "emb_layers" in n for n in names)
    assert not any(n.startswith(f"output_blocks.{i}.") for i in range(7, 18) for n in names)
    assert any(n.endswith("film_scale") for n in names)
    assert count_parameters(trunc) < count_parameters(tiny)
    big = TruncatedADM(meta_adm256, 30, 6)
    assert count_parameters(big) < count_parameters(meta_adm256) == 552_814_086
    with pytest.raises(ExportError, match="multiples"):
        trunc(torch.zeros(1, 3, 64, 90))
    with pytest.raises(ExportError):
        TruncatedADM(tiny, 30, 18)


def test_truncated_onnx_export_runs_in_onnxruntime(tiny: ADMUNet, golden, tmp_path: Path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    trunc = TruncatedADM(tiny, 30, 6).eval()
    x = torch.from_numpy(golden["x_t"])
    path = tmp_path / "adm6.onnx"
    torch.onnx.export(
        trunc, (x,), str(path), opset_version=17, dynamo=False,
        input_names=["x_t"], output_names=["features"], dynamic_axes={"x_t": {0: "E"}},
    )
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Sin", "Cos"}  # time embedding folded away
    assert "MatMul" in ops and "Softmax" in ops
    assert not any("time_embed" in i.name or "emb_layers" in i.name for i in graph.initializer)
    assert len(graph.initializer) < len(tiny.state_dict())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = np.concatenate([golden["x_t"], golden["x_t"][:1] * 0.5])  # another ensemble size
    for inp in (golden["x_t"], x3):
        out = session.run(None, {"x_t": inp})[0]
        with torch.no_grad():
            ref = trunc(torch.from_numpy(inp)).numpy()
        assert out.shape == ref.shape and rel_err(out, ref) <= 1e-4
    assert rel_err(session.run(None, {"x_t": golden["x_t"]})[0], golden["output_block_6_ensemble_mean"]) <= 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_scale_shift_norm": False, "resblock_updown": False},
        {"use_new_attention_order": True, "num_head_channels": -1, "num_heads": 2, "learn_sigma": False},
    ],
)
def test_variants_fold_consistently(overrides):
    cfg = ADMConfig(image_size=64, num_channels=32, channel_mult=(1, 2), attention_resolutions=(32,), **overrides)
    torch.manual_seed(0)
    model = ADMUNet(cfg).eval()
    for p in model.parameters():  # upstream zero-inits some convs; make every layer matter
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(3, 3, 16, 24)
    with torch.no_grad():
        assert model(x, 5).shape == (3, cfg.out_channels, 16, 24)
        for layer in range(len(model.output_blocks)):
            ref = model.decoder_features(x, 5, layer).mean(0, keepdim=True)
            assert rel_err(TruncatedADM(model, 5, layer)(x), ref) <= 1e-5


# --- FLOPs and schedule ---------------------------------------------------------------------------


def test_count_flops_hand_computed():
    lin = torch.nn.Linear(3, 4)
    assert count_flops(lin, torch.zeros(2, 3)) == 2 * 2 * 3 * 4
    conv = torch.nn.Conv2d(2, 5, 3, padding=1, device="meta")
    assert count_flops(conv, torch.empty(1, 2, 8, 8, device="meta")) == 2 * 5 * 2 * 9 * 64


def test_flops_tiny_and_adm256(tiny: ADMUNet, meta_adm256: ADMUNet):
    x = torch.zeros(1, 3, 64, 96)
    assert 0 < count_flops(TruncatedADM(tiny, 30, 6), x) < count_flops(tiny, x, 30)
    xm = torch.empty(1, 3, 256, 256, device="meta")
    full = count_flops(meta_adm256, xm, torch.tensor([30], device="meta"))
    trunc = count_flops(TruncatedADM(meta_adm256, 30, 6), xm)
    assert full == pytest.approx(2.24e12, rel=0.03)
    assert trunc == pytest.approx(0.72e12, rel=0.03)


def test_linear_schedule(golden):
    ab = linear_alphas_cumprod()
    assert ab.dtype == np.float64 and ab.shape == (1000,)
    assert ab[0] == pytest.approx(1 - 1e-4) and ab[1] == pytest.approx((1 - 1e-4) * (1 - (1e-4 + 0.0199 / 999)))
    np.testing.assert_allclose(ab, golden["alphas_cumprod"], rtol=1e-12, atol=0)
    t = int(golden["t"])
    x_t = np.sqrt(ab[t]) * golden["x0"] + np.sqrt(1 - ab[t]) * golden["noise"]
    np.testing.assert_allclose(x_t, golden["x_t"], atol=1e-6)
