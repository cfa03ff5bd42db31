"""The tiny ADM fixture exported as an FP32 bundle once per test session (shared by test files)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=None)
def tiny_adm_bundle(fixture_dir: Path, layer: int = 6) -> Path:
    import torch

    from diffvos.bundle.schedules import linear_alphas_cumprod
    from diffvos.export.adm import ADMConfig, ADMUNet, TruncatedADM
    from diffvos.export.onnx_export import GraphSpec, PreparedBackbone, write_bundle

    cfg = json.loads((fixture_dir / "adm_tiny_config.json").read_text())
    model = ADMUNet(ADMConfig.from_dict(cfg))
    model.load_state_dict(torch.load(fixture_dir / "adm_tiny_state_dict.pt", weights_only=True))
    trunc = TruncatedADM(model.eval(), cfg["t"], layer).eval()
    h, w = cfg["input_hw"]
    e = cfg["ensemble"]
    spec = GraphSpec("features", trunc, torch.randn(e, 3, h, w), "x_t", "features")
    prepared = PreparedBackbone("adm", [spec], cfg["t"], float(linear_alphas_cumprod()[cfg["t"]]), layer,
                                trunc.stride, trunc.channels, e, h, w)
    out = Path(tempfile.mkdtemp(prefix="diffvos-tiny-adm-")) / "fp32"
    write_bundle(prepared, out, verify=False, log=lambda s: None)
    return out
