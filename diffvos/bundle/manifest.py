"""The bundle manifest, ``diffvos.json``: the one schema where export, calibration and the runtime meet.

Every section is a typed dataclass; reading checks every field's type and names the field that
is wrong. Export and calibration write bundles through :func:`write_manifest`; the runtime reads
them through :func:`read_manifest`. Torch-free.

Layout of a bundle::

    bundle/
      diffvos.json        manifest (this schema)
      features.onnx       pixel- or latent-space feature graph: x_t [B*E,Cin,H,W] -> features [B,C,h,w]
                          (B streams of E draws each, B up to ``streams.max_streams``; B = 1 in older bundles)
      vae_encoder.onnx    (Stable Diffusion only) image [1,3,H,W] in [-1,1] -> latent [1,4,H/8,W/8], scaled
      noise_prediction.onnx  (optional, ``ddim`` section) x_t [1,Cin,H,W], timestep [1] -> eps [1,Cin,H,W]
      <graph>.plan        TensorRT engines written by ``diffvos build-engine`` (optional)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffvos.config import PRECISIONS
from diffvos.errors import BundleError
from diffvos.io.atomic import write_text_atomic

SCHEMA_VERSION = 2  # 2: typed sections (export, tensorrt, calibration, fp16) instead of "extra"
MANIFEST_NAME = "diffvos.json"
FEATURES_GRAPH = "features"
VAE_GRAPH = "vae_encoder"
NOISE_GRAPH = "noise_prediction"
AFFINITY_KINDS = ("features", "attention")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class GraphEntry:
    """One ONNX graph of the bundle."""

    file: str
    sha256: str
    inputs: dict[str, list[Any]]  # name -> shape, a dimension may be a string (dynamic)
    outputs: dict[str, list[Any]]
    precision: str = "fp32"  # one of config.PRECISIONS
    external_data: str | None = None  # weights file of a graph over protobuf's 2 GB limit
    external_data_sha256: str | None = None

    @property
    def input_name(self) -> str:
        return next(iter(self.inputs))


@dataclass
class Preprocess:
    """How a frame becomes the graph's x_0 (METHOD.md section 1.1)."""

    color: str = "RGB"  # channel order the graph expects
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
class Checkpoint:
    """Where the weights came from."""

    name: str = ""
    sha256: str | None = None
    source: str | None = None  # a path or hub id (Stable Diffusion)
    weights_file: str | None = None
    config: dict[str, Any] | None = None  # the model's hyper-parameters (ADM)
    schedule: str | None = None
    prompt_embeds: str | None = None  # origin of the folded prompt (Stable Diffusion)
    note: str | None = None


@dataclass
class Comparison:
    """A graph's output against a reference on the same input (:func:`diffvos.bundle.compare`)."""

    max_abs_error: float
    max_rel_error: float
    cosine: float
    tolerance: dict[str, float] = field(default_factory=dict)
    input_shape: list[int] | None = None
    provider: str | None = None
    seconds: float | None = None


@dataclass
class Flops:
    """Floating-point operations per noise draw (a multiply-add counts 2)."""

    truncated: int | None = None
    full: int | None = None
    vae_encoder: int | None = None
    per: str = ""
    height: int | None = None
    width: int | None = None


@dataclass
class GraphFacts:
    nodes: int
    initializers: int
    op_types: list[str]
    external_data: str | None = None
    export_seconds: float | None = None


@dataclass
class ExportFacts:
    """What the exporter built and verified."""

    height: int  # the size the graphs were exported and verified at
    width: int
    graphs: dict[str, GraphFacts] = field(default_factory=dict)
    verification: dict[str, Comparison] = field(default_factory=dict)  # per graph; empty: --no-verify
    note: str | None = None


@dataclass
class TensorRTPlan:
    """A TensorRT engine built from one graph by ``diffvos build-engine``."""

    plan: str  # file name in the bundle
    sha256: str
    trt_version: str
    gpu: str
    compute_capability: str
    precision: str
    profile: dict[str, list[int]]  # min / opt / max input shapes
    strongly_typed: bool = True
    opt_level: int = 3
    workspace_gb: float = 4.0
    build_seconds: float | None = None


@dataclass
class MaskCheck:
    """One video of the INT8 mask gate: masks tracked with the INT8 graph against the FP32
    bundle's (``Session.step``, same options), and J&F against ground truth where given."""

    video: str
    frames: int  # frames scored (after the first, which is the given mask)
    objects: int
    mean_iou: float  # mean over the scored frames of the per-frame object IoU vs FP32
    min_iou: float
    iou_limit: float  # what mean_iou had to reach: min(--min-iou, noise_floor_iou)
    passed: bool
    noise_floor_iou: float | None = None  # FP32 vs FP32 with one grey level of input noise
    jf_fp32: float | None = None  # DAVIS J&F in points (0-100), where ground truth was given
    jf: float | None = None
    jf_delta: float | None = None  # jf - jf_fp32, points
    role: str = "heldout"  # heldout | calibration (its non-calibration frames) | proxy
    mask: str = ""  # where the first mask came from


@dataclass
class SearchStep:
    """One evaluation of the mixed-precision search: the k most sensitive nodes kept float."""

    k: int
    graph_sha256: str
    int8_flop_fraction: float | None
    mean_iou: float  # pooled over the proxy clips' frames
    iou_limit: float
    passed: bool
    jf_delta: float | None = None  # mean over the proxy clips with ground truth, points
    seconds: float | None = None
    same_graph_as: int | None = None  # an earlier k whose graph was identical (not re-evaluated)


@dataclass
class PrecisionSearch:
    """Which nodes stay float: the sensitivity ranking and the search over how many."""

    base: str  # the candidate the search started from
    order: list[str]  # compute nodes, most sensitive first
    steps: list[SearchStep]
    kept: int | None  # k chosen (None: no k passed the proxy gate)
    proxy: list[MaskCheck] = field(default_factory=list)  # the FP32 references of the proxy clips
    seconds: float | None = None


@dataclass
class CpuSpeed:
    """The INT8 graph against FP32 on ONNX Runtime's CPU provider (alternating runs, medians)."""

    fp32_ms: float
    int8_ms: float
    speedup: float  # fp32_ms / int8_ms
    runs: int
    threads: int
    note: str = ""


@dataclass
class Calibration:
    """The INT8 calibration and its accuracy report (``diffvos calibrate``)."""

    method: str
    calibration_frames: int
    heldout_frames: int
    sources: list[str]
    seed: int
    fresh_noise: bool
    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]
    accuracy: dict[str, Any]  # feature agreement on held-out frames (reported, not gated)
    limits: dict[str, float]
    passed: bool
    masks: dict[str, Any] = field(default_factory=dict)  # schema-2 bundles before issue 14
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    fp32_ms: float | None = None
    trt_calibration_cache: dict[str, Any] = field(default_factory=dict)
    source_bundle: str | None = None
    seconds: float | None = None
    failures: list[str] = field(default_factory=list)  # each failed limit and by how much
    videos: list[MaskCheck] = field(default_factory=list)  # the mask gate, per video
    kept_float: list[str] = field(default_factory=list)  # compute nodes left in float
    int8_flop_fraction: float | None = None  # of the compute nodes' FLOPs
    search: PrecisionSearch | None = None
    cpu_speed: CpuSpeed | None = None
    tensorrt_violations: list[str] = field(default_factory=list)  # Q/DQ rules (calibration.qdq_check)
    recommendation: str | None = None

    def failed_limits(self) -> list[str]:
        """Why this calibration failed its gate (empty when it passed); bundles written before
        the failures were recorded get them rebuilt from their limits and measurements."""
        if self.passed:
            return []
        if self.failures:
            return list(self.failures)
        lines = []
        cos, need = self.accuracy.get("min_cosine"), self.limits.get("min_cosine")
        if isinstance(cos, (int, float)) and isinstance(need, (int, float)) and cos < need:
            lines.append(f"held-out feature cosine {cos:.4f} < {need:g} (by {need - cos:.4f})")
        iou, need = self.masks.get("mean_iou"), self.limits.get("min_iou")
        if isinstance(iou, (int, float)) and isinstance(need, (int, float)) and iou < need:
            lines.append(f"mask IoU vs FP32 {iou:.4f} < {need:g} (by {need - iou:.4f})")
        return lines or ["the calibration report says it did not pass"]


@dataclass
class Fp16Conversion:
    graphs: dict[str, dict[str, Any]]  # per graph: kept op types, repaired casts, seconds
    verification: dict[str, Comparison]
    source_bundle: str | None = None


@dataclass
class Affinity:
    """What the feature graph's output is, and so how the runtime builds the affinity from it.

    ``features``: a feature map [1,C,h,w]; affinity exp(cos/T) (METHOD.md section 2).
    ``attention``: the query and key projections of one self-attention layer, [1, 2*heads*head_dim,
    h, w], all queries (head-major) then all keys; affinity softmax(q.k/sqrt(head_dim)) per head,
    combined over heads (README, "Attention-kernel propagation").
    """

    kind: str = "features"  # one of AFFINITY_KINDS
    heads: int = 1
    head_dim: int | None = None  # channels per head (attention)
    module: str | None = None  # the attention module's name in the model (attention)


@dataclass
class DDIM:
    """The noise-prediction graph used for deterministic DDIM inversion instead of random noise.

    ``alphas_cumprod`` is the model's whole training schedule (index = time step), so the number
    of inversion steps can be chosen at run time; ``timestep_input`` is the graph's time-step input.
    """

    graph: str = NOISE_GRAPH
    alphas_cumprod: list[float] = field(default_factory=list)
    timestep_input: str = "timestep"
    sample_input: str = "x_t"
    output: str = "eps"
    prediction: str = "epsilon"  # epsilon | v_prediction (the runtime converts v to eps)
    default_steps: int = 10
    schedule: str = ""


@dataclass
class StreamBatch:
    """How many streams one call of the feature graph takes (the batch axis).

    A graph with ``max_streams`` > 1 takes x_t [B*E,Cin,H,W], stream b's E draws at rows
    b*E..b*E+E-1, and returns features [B,C,h,w], the mean over each stream's draws; B may be
    1..max_streams (the TensorRT profile's range). Older bundles (the default, 1) reduce the
    whole batch to one stream, so the runtime steps their streams one call each.
    """

    max_streams: int = 1
    opt_streams: int = 1  # the TensorRT profile's optimum


@dataclass
class Manifest:
    backbone: str  # adm | sd | mobilenetv2 | ...
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
    precision: str = "fp32"  # one of config.PRECISIONS
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    flops: Flops = field(default_factory=Flops)
    versions: dict[str, str] = field(default_factory=dict)
    export: ExportFacts | None = None
    tensorrt: dict[str, TensorRTPlan] = field(default_factory=dict)  # per graph
    calibration: Calibration | None = None
    fp16: Fp16Conversion | None = None
    affinity: Affinity = field(default_factory=Affinity)  # absent in older bundles: a feature map
    ddim: DDIM | None = None
    streams: StreamBatch = field(default_factory=StreamBatch)  # absent in older bundles: one stream per call
    schema_version: int = SCHEMA_VERSION

    @property
    def input_channels(self) -> int:
        return self.latent.channels if self.latent else 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, dict):
            raise BundleError(f"manifest must be a JSON object, got a JSON {type(data).__name__}", source)
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError("manifest has no integer schema_version", source)
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"bundle uses manifest schema {version}, this diffvos reads up to {SCHEMA_VERSION}: "
                "upgrade diffvos or re-export the bundle",
                source,
            )
        if version < 2:
            data = _upgrade_v1(data)
        manifest = _build(cls, data, "manifest", source)
        if FEATURES_GRAPH not in manifest.graphs:
            raise BundleError(f"manifest lists no '{FEATURES_GRAPH}' graph", source)
        for name, precision in [("precision", manifest.precision)] + [
            (f"graphs.{g}.precision", e.precision) for g, e in manifest.graphs.items()
        ]:
            if precision not in PRECISIONS:
                raise BundleError(f"manifest field {name} is {precision!r}, expected one of {', '.join(PRECISIONS)}", source)
        _check_affinity(manifest, source)
        if manifest.ddim is not None and manifest.ddim.graph not in manifest.graphs:
            raise BundleError(f"manifest field ddim.graph names '{manifest.ddim.graph}', which is not a graph of the bundle",
                              source)
        s = manifest.streams
        if not 1 <= s.opt_streams <= s.max_streams:
            raise BundleError(f"manifest field streams must have 1 <= opt_streams <= max_streams, got "
                              f"opt_streams={s.opt_streams}, max_streams={s.max_streams}", source)
        return manifest


def _check_affinity(manifest: Manifest, source: str | Path) -> None:
    a = manifest.affinity
    if a.kind not in AFFINITY_KINDS:
        raise BundleError(f"manifest field affinity.kind is {a.kind!r}, expected one of {', '.join(AFFINITY_KINDS)}",
                          source)
    if a.kind == "attention":
        if a.heads < 1 or not a.head_dim or a.head_dim < 1:
            raise BundleError(f"manifest field affinity: attention needs heads >= 1 and head_dim >= 1, got "
                              f"heads={a.heads}, head_dim={a.head_dim}", source)
        if manifest.channels != 2 * a.heads * a.head_dim:
            raise BundleError(f"manifest: an attention bundle's channels ({manifest.channels}) must be 2 x heads x "
                              f"head_dim = {2 * a.heads * a.head_dim} (queries then keys)", source)


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 kept the export facts, TensorRT plans, calibration and fp16 reports in ``extra``."""
    data = dict(data)
    extra = dict(data.pop("extra", None) or {})
    verification = data.pop("verification", None) or {}
    size = extra.pop("export_size", None)
    if size:
        data["export"] = {
            "height": size[0], "width": size[1], "graphs": extra.pop("graphs", {}),
            "verification": {k: v for k, v in verification.items() if isinstance(v, dict) and "cosine" in v},
            "note": extra.pop("baseline", None),
        }
    data["tensorrt"] = extra.pop("tensorrt", {})
    if extra.get("calibration"):
        data["calibration"] = {**extra.pop("calibration"), "source_bundle": extra.pop("source_bundle", None)}
    if extra.get("fp16"):
        data["fp16"] = extra.pop("fp16")
    data["schema_version"] = SCHEMA_VERSION
    return data


def _build(tp: Any, value: Any, where: str, source: str | Path) -> Any:
    """``value`` (parsed JSON) as type ``tp``, checked; errors name the field (``where``)."""
    def bad(expected: str) -> BundleError:
        return BundleError(f"manifest field {where} must be {expected}, got {json.dumps(value)[:60]}", source)

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise bad("set")
        tp = next(t for t in options if t is not type(None))
        origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad("an object")
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in dataclasses.fields(tp)}
        missing = [n for n, f in known.items() if n not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise BundleError(f"manifest section {where} lacks {', '.join(missing)}", source)
        kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where != "manifest" else k, source)
                  for k, v in value.items() if k in known}
        return tp(**kwargs)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("an object")
        _, vt = typing.get_args(tp)
        return {str(k): _build(vt, v, f"{where}.{k}", source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise bad("a list")
        (it,) = typing.get_args(tp)
        return [_build(it, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Read and check a bundle's manifest; with ``verify_files`` also check every graph's sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError("bundle directory does not exist" if not bundle_dir.exists() else "not a directory", bundle_dir)
    if not path.is_file():
        raise BundleError(f"not a diffvos bundle (no {MANIFEST_NAME})", bundle_dir)
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest ({exc})", path) from exc
    manifest = Manifest.from_dict(data, path)
    if verify_files:
        for name, entry in manifest.graphs.items():
            files = [(bundle_dir / entry.file, entry.sha256)]
            if entry.external_data:
                files.append((bundle_dir / entry.external_data, entry.external_data_sha256))
            for file, digest in files:
                if not file.is_file():
                    raise BundleError(f"file of graph '{name}' is missing", file)
                if sha256_file(file) != digest:
                    raise BundleError(
                        f"file of graph '{name}' is corrupted (sha256 differs from the manifest); re-export the bundle",
                        file,
                    )
    return manifest
