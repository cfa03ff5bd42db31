"""FP16 conversion: ONNX Runtime loads and runs the graphs; accuracy vs PyTorch and FP32."""

from __future__ import annotations

import numpy as np
import pytest

from diffvos.bundle import read_manifest
from diffvos.bundle.compare import compare
from diffvos.export.toy import make_toy_bundle

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_diffusers_unet_cast_repair(tmp_path):
    """onnxconverter-common alone leaves Cast(to=float) that ORT rejects; the repaired graph runs."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from onnxconverter_common import float16

    from diffvos.export.fp16 import SENSITIVE_OPS, convert_model_fp16

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()

    class Fixed(torch.nn.Module):  # the runtime's graphs take x_t only: t is a constant
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x):
            return self.unet(x, torch.tensor([30])).sample

    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(Fixed(), (x,), str(path), input_names=["x_t"], output_names=["out"], opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    naive = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True,
                                             op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(SENSITIVE_OPS))
    onnx.save(naive, str(tmp_path / "naive.onnx"))
    with pytest.raises(Exception, match="[Tt]ype"):
        _run(tmp_path / "naive.onnx", x.numpy())
    fixed, facts = convert_model_fp16(model)
    assert facts["repaired_casts"]
    onnx.save(fixed, str(tmp_path / "fp16.onnx"))
    with torch.no_grad():
        expected = Fixed()(x).numpy()
    got = _run(tmp_path / "fp16.onnx", x.numpy())
    assert got.dtype == np.float32  # I/O stays float32
    assert compare(expected, got).cosine > 0.999
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fixed.graph.initializer)


def test_toy_bundle_fp16(tmp_path):
    from diffvos.export.fp16 import convert_bundle_fp16

    src = make_toy_bundle(tmp_path / "toy", ensemble=2)
    m = convert_bundle_fp16(src, tmp_path / "fp16", log=lambda s: None)
    assert m.precision == "fp16" and read_manifest(tmp_path / "fp16").graphs["features"].precision == "fp16"
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    res = compare(_run(src / "features.onnx", x), _run(tmp_path / "fp16" / "features.onnx", x))
    assert res.cosine > 0.9999 and res.max_rel_error < 5e-3


def test_tiny_adm_fp16_matches_golden(adm_fixture_dir, tmp_path):
    pytest.importorskip("torch")
    from diffvos.export.fp16 import convert_bundle_fp16
    from tests.adm_bundle import tiny_adm_bundle

    src = tiny_adm_bundle(adm_fixture_dir)
    convert_bundle_fp16(src, tmp_path / "fp16", log=lambda s: None)
    model = onnx.load(str(tmp_path / "fp16" / "features.onnx"))
    norm_inputs = {n.input[0] for n in model.graph.node if n.op_type == "InstanceNormalization"}
    casts16 = {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT}
    assert norm_inputs and norm_inputs <= casts16  # normalisation statistics stay float32
    golden = np.load(adm_fixture_dir / "adm_tiny_golden.npz")
    got = _run(tmp_path / "fp16" / "features.onnx", golden["x_t"].astype(np.float32))
    res = compare(golden["output_block_6_ensemble_mean"], got)
    assert res.cosine > 0.999 and res.max_rel_error < 2e-2


def test_fp16_refuses_int8(tmp_path):
    from diffvos.bundle import write_manifest
    from diffvos.errors import BundleError
    from diffvos.export.fp16 import convert_bundle_fp16

    src = make_toy_bundle(tmp_path / "toy")
    m = read_manifest(src)
    m.precision = "int8"
    write_manifest(src, m)
    with pytest.raises(BundleError, match="needs an fp32 bundle"):
        convert_bundle_fp16(src, tmp_path / "out", log=lambda s: None)
