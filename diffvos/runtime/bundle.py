"""The engine bundle: a directory of graphs plus one manifest, ``diffvos.json``.

This module is the single definition of the manifest schema. The exporter and the
calibrator write bundles through it; the runtime reads them through it. It imports no torch.

Layout of a bundle::

    bundle/
      diffvos.json        manifest (this schema)
      features.onnx       pixel- or latent-space feature graph: x_t [E,Cin,H,W] -> features [1,C,h,w]
      vae_encoder.onnx    (Stable Diffusion only) image [1,3,H,W] in [-1,1] -> latent [1,4,H/8,W/8], scaled
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffvos.runtime.atomic import write_text_atomic
from diffvos.runtime.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "diffvos.json"
FEATURES_GRAPH = "features"
VAE_GRAPH = "vae_encoder"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class GraphEntry:
    """One ONNX graph (or TensorRT plan) of the bundle."""

    file: str
    sha256: str
    inputs: dict[str, list[Any]]  # name -> shape, a dimension may be a string (dynamic)
    outputs: dict[str, list[Any]]
    precision: str = "fp32"  # fp32 | fp16 | int8 (Q/DQ)
    external_data: str | None = None  # weights file of a graph over protobuf's 2 GB limit
    external_data_sha256: str | None = None


@dataclass
class Preprocess:
    """How a frame becomes the graph's x_0 (METHOD.md section 1.1)."""

    color: str = "RGB"  # channel order the graph expects; frames are decoded as BGR
    scale: float = 2.0 / 255.0  # x = pixel * scale + offset
    offset: float = -1.0
    mean: list[float] | None = None  # optional per-channel normalisation after scale/offset
    std: list[float] | None = None
    short_side: int = 480  # frames are resized so the short side is this ...
    multiple: int = 32  # ... and each side floored to a multiple of this


@dataclass
class Latent:
    """Latent-space models (Stable Diffusion): the VAE graph and its scaling."""

    scaling_factor: float
    downsample: int  # pixels per latent cell
    channels: int
    posterior: str = "mean"  # mean | sample


@dataclass
class Manifest:
    backbone: str  # adm | sd | mobilenetv2
    timestep: int  # diffusion time step t (0 for non-diffusion backbones)
    alpha_bar: float  # ᾱ_t; 1.0 means no noise
    layer: int  # decoder layer (ADM output block, SD up-resnet index, MobileNet stage)
    stride: int  # pixels per feature cell
    channels: int  # feature channels C
    ensemble: int  # E noise draws in the batch
    height: int | None  # graph input size in pixels; None when dynamic
    width: int | None
    graphs: dict[str, GraphEntry]
    preprocess: Preprocess = field(default_factory=Preprocess)
    latent: Latent | None = None
    dynamic: bool = False
    min_size: list[int] | None = None  # [H, W] range of a dynamic bundle
    max_size: list[int] | None = None
    precision: str = "fp32"
    checkpoint: dict[str, Any] = field(default_factory=dict)  # name, sha256, config
    verification: dict[str, Any] = field(default_factory=dict)  # max_abs_error, cosine, tolerance
    flops: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # calibration, TensorRT plan facts, ...
    schema_version: int = SCHEMA_VERSION

    @property
    def input_channels(self) -> int:
        return self.latent.channels if self.latent else 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = MANIFEST_NAME) -> "Manifest":
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise BundleError("manifest has no integer schema_version", source)
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"bundle uses manifest schema {version}, this diffvos reads up to {SCHEMA_VERSION}: "
                "upgrade diffvos or re-export the bundle",
                source,
            )
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["graphs"] = {k: GraphEntry(**v) for k, v in data["graphs"].items()}
            kwargs["preprocess"] = Preprocess(**data.get("preprocess", {}))
            if data.get("latent") is not None:
                kwargs["latent"] = Latent(**data["latent"])
            manifest = cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"malformed manifest ({exc})", source) from exc
        if FEATURES_GRAPH not in manifest.graphs:
            raise BundleError(f"manifest lists no '{FEATURES_GRAPH}' graph", source)
        return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Read and check a bundle's manifest; with ``verify_files`` also check every graph's sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError("bundle directory does not exist", bundle_dir)
    if not path.is_file():
        raise BundleError(f"not a diffvos bundle (no {MANIFEST_NAME})", bundle_dir)
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest ({exc})", path) from exc
    manifest = Manifest.from_dict(data, path)
    if verify_files:
        for name, entry in manifest.graphs.items():
            file = bundle_dir / entry.file
            files = [(file, entry.sha256)]
            if entry.external_data:
                files.append((bundle_dir / entry.external_data, entry.external_data_sha256))
            for path_, digest in files:
                if not path_.is_file():
                    raise BundleError(f"file of graph '{name}' is missing", path_)
                if sha256_file(path_) != digest:
                    raise BundleError(
                        f"file of graph '{name}' is corrupted (sha256 differs from the manifest); "
                        "re-export the bundle",
                        path_,
                    )
    return manifest
