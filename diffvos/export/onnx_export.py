"""Export truncated backbones to ONNX, verify them in ONNX Runtime, and write the bundle.

Every backbone (ADM, Stable Diffusion, MobileNetV2) hands over a :class:`PreparedBackbone`:
the torch modules of its graphs with example inputs, plus the facts the manifest records.
This module turns it into a bundle directory, atomically: the bundle appears whole, verified,
or not at all.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffvos.bundle import (
    DDIM,
    FEATURES_GRAPH,
    Affinity,
    Checkpoint,
    Comparison,
    ExportFacts,
    Flops,
    GraphEntry,
    GraphFacts,
    Latent,
    Manifest,
    Preprocess,
    StreamBatch,
    sha256_file,
    write_manifest,
)
from diffvos.bundle.compare import compare
from diffvos.errors import ExportError
from diffvos.io.atomic import staged_directory

OPSET = 17
# ONNX Runtime 1.18+ reads IR version 10; newer onnx packages may write 11+.
MAX_IR_VERSION = 10
PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights above which a graph keeps them in an external file
DEFAULT_TOLERANCE = {"max_rel_error": 1e-3, "min_cosine": 0.9999}


@dataclass
class GraphSpec:
    """One torch module to export as one ONNX graph."""

    name: str  # manifest key: "features", "vae_encoder" or "noise_prediction"
    module: Any  # torch.nn.Module
    example: Any  # torch.Tensor, the example (and verification) input; a tuple for several inputs
    input_name: str | tuple[str, ...]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]] | None = None

    @property
    def examples(self) -> tuple[Any, ...]:
        return self.example if isinstance(self.example, tuple) else (self.example,)

    @property
    def input_names(self) -> list[str]:
        return list(self.input_name) if isinstance(self.input_name, tuple) else [self.input_name]


@dataclass
class PreparedBackbone:
    """What a backbone loader gives the exporter: graphs plus the facts for the manifest."""

    backbone: str
    graphs: list[GraphSpec]
    timestep: int
    alpha_bar: float
    layer: int
    stride: int
    channels: int
    ensemble: int
    height: int
    width: int
    preprocess: Preprocess = field(default_factory=Preprocess)
    latent: Latent | None = None
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    flops: Flops = field(default_factory=Flops)
    note: str | None = None
    affinity: Affinity = field(default_factory=Affinity)
    ddim: DDIM | None = None
    extra_files: dict[str, bytes] = field(default_factory=dict)  # written into the bundle with the graphs


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    import diffvos

    found = {
        "diffvos": diffvos.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
    }
    for mod in ("diffusers", "transformers"):
        if mod in sys.modules:
            found[mod] = getattr(sys.modules[mod], "__version__", "?")
    return found


def export_graph(spec: GraphSpec, path: Path, opset: int = OPSET, constant_folding: bool = True,
                 transform: Callable[[Any], Any] | None = None) -> GraphFacts:
    """torch -> ONNX (TorchScript exporter: mature, deterministic names); returns graph facts.
    ``transform`` rewrites the ``onnx.ModelProto`` before it is saved (the stream axis)."""
    import onnx
    import torch

    spec.module.eval()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            spec.module,
            spec.examples,
            str(path),
            input_names=spec.input_names,
            output_names=[spec.output_name],
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            do_constant_folding=constant_folding,
            dynamo=False,
        )
    model = onnx.load(str(path))
    if transform is not None:
        model = transform(model)
    external = None
    weight_bytes = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    if weight_bytes > PROTOBUF_LIMIT:
        external = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external)
    else:
        onnx.save_model(model, str(path))
    return GraphFacts(nodes=len(model.graph.node), initializers=len(model.graph.initializer),
                      op_types=sorted({n.op_type for n in model.graph.node}), external_data=external)


def _shape(value_info) -> list[Any]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def verify_graph(spec: GraphSpec, path: Path, tolerance: dict[str, float]) -> Comparison:
    """Run the ONNX graph in ONNX Runtime (CPU) and PyTorch on the same input and compare."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = spec.module(*spec.examples).detach().cpu().numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: x.detach().cpu().numpy() for name, x in zip(spec.input_names, spec.examples)}
    got = session.run([spec.output_name], feed)[0]
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}", path)
    result = compare(expected, got)
    result.tolerance, result.input_shape, result.provider = dict(tolerance), list(spec.examples[0].shape), "CPUExecutionProvider"
    if not (result.max_rel_error <= tolerance["max_rel_error"] and result.cosine >= tolerance["min_cosine"]):
        raise ExportError(
            f"graph '{spec.name}' disagrees with PyTorch beyond tolerance: max abs error "
            f"{result.max_abs_error:.3e}, relative {result.max_rel_error:.3e} (limit "
            f"{tolerance['max_rel_error']:.0e}), cosine {result.cosine:.6f} (limit {tolerance['min_cosine']})",
            path,
        )
    return result


def write_bundle(
    prepared: PreparedBackbone,
    output: str | Path,
    *,
    force: bool = False,
    dynamic: bool = False,
    min_size: list[int] | None = None,
    max_size: list[int] | None = None,
    verify: bool = True,
    tolerance: dict[str, float] | None = None,
    opset: int = OPSET,
    max_streams: int | None = None,
    log: Callable[[str], None] = print,
) -> Manifest:
    """Export every graph of ``prepared`` into a new bundle directory at ``output``.

    ``max_streams`` (default: the backbone's, :data:`~diffvos.config.EXPORT_DEFAULTS`) > 1 gives
    the feature graph a stream axis (:mod:`diffvos.export.batching`), verified on several streams.
    """
    from diffvos.config import EXPORT_DEFAULTS

    tolerance = tolerance or DEFAULT_TOLERANCE
    if max_streams is None:
        max_streams = EXPORT_DEFAULTS[prepared.backbone].max_streams if prepared.backbone in EXPORT_DEFAULTS else 1
    if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
        raise ExportError(f"--max-streams must be an integer >= 1, got {max_streams!r}")
    entries: dict[str, GraphEntry] = {}
    verification: dict[str, Comparison] = {}
    graph_facts: dict[str, GraphFacts] = {}
    with staged_directory(output, force=force) as stage:
        for spec in prepared.graphs:
            file = f"{spec.name}.onnx"
            path = stage / file
            t0 = time.perf_counter()
            transform, checked = None, spec
            if spec.name == FEATURES_GRAPH and max_streams > 1:
                spec, checked, transform = _with_stream_axis(spec, prepared.ensemble)
            log(f"exporting graph '{spec.name}' (input {list(spec.examples[0].shape)}) ...")
            facts = export_graph(spec, path, opset=opset, transform=transform)
            facts.export_seconds = round(time.perf_counter() - t0, 3)
            graph_facts[spec.name] = facts
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            entries[spec.name] = GraphEntry(
                file=file,
                sha256=sha256_file(path),
                inputs={i.name: _shape(i) for i in model.graph.input},
                outputs={o.name: _shape(o) for o in model.graph.output},
                external_data=facts.external_data,
                external_data_sha256=sha256_file(stage / facts.external_data) if facts.external_data else None,
            )
            if verify:
                t0 = time.perf_counter()
                log(f"verifying '{spec.name}' in ONNX Runtime against PyTorch ...")
                v = verification[spec.name] = verify_graph(checked, path, tolerance)
                v.seconds = round(time.perf_counter() - t0, 3)
                log(f"  max abs error {v.max_abs_error:.3e}, cosine {v.cosine:.8f}")
        manifest = Manifest(
            backbone=prepared.backbone,
            timestep=prepared.timestep,
            alpha_bar=float(prepared.alpha_bar),
            layer=prepared.layer,
            stride=prepared.stride,
            channels=prepared.channels,
            ensemble=prepared.ensemble,
            height=None if dynamic else prepared.height,
            width=None if dynamic else prepared.width,
            graphs=entries,
            preprocess=prepared.preprocess,
            latent=prepared.latent,
            dynamic=dynamic,
            min_size=min_size if dynamic else None,
            max_size=max_size if dynamic else None,
            precision="fp32",
            checkpoint=prepared.checkpoint,
            flops=prepared.flops,
            versions=versions(),
            export=ExportFacts(height=prepared.height, width=prepared.width, graphs=graph_facts,
                               verification=verification, note=prepared.note),
            affinity=prepared.affinity,
            ddim=prepared.ddim,
            streams=StreamBatch(max_streams=max_streams, opt_streams=max_streams),
        )
        for name, data in prepared.extra_files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(data)
        write_manifest(stage, manifest)
    return manifest


def _with_stream_axis(spec: GraphSpec, ensemble: int) -> tuple[GraphSpec, GraphSpec, Callable[[Any], Any]]:
    """For a feature graph with a stream axis: the spec to export (a dynamic draw axis, traced on
    several streams' draws), the spec to verify it with (PyTorch stream by stream on the same
    input) and the ONNX rewrite that averages per stream."""
    from dataclasses import replace

    from diffvos.export import batching

    axes = {k: dict(v) for k, v in (spec.dynamic_axes or {}).items()}
    axes.setdefault(spec.input_name, {})[0] = batching.DRAWS_AXIS
    exported = replace(spec, example=batching.stream_example(spec.example), dynamic_axes=axes)
    checked = replace(exported, module=batching.per_stream_reference(spec.module, ensemble))
    static_axes = [a for a in (1, 2, 3) if a not in (spec.dynamic_axes or {}).get(spec.output_name, {})]

    def transform(model: Any) -> Any:
        """The stream rewrite, then the output's static dimensions from one stream's PyTorch output
        (the tracer names them when the draw axis is dynamic, e.g. after an attention reshape)."""
        import torch

        model = batching.batch_streams(model, ensemble)
        with torch.no_grad():
            reference = spec.module(spec.example).shape
        dims = model.graph.output[0].type.tensor_type.shape.dim
        for axis in static_axes:
            if axis < len(dims):
                dims[axis].dim_value = int(reference[axis])
        return model

    return exported, checked, transform


def feature_dynamic_axes(input_name: str, output_name: str) -> dict[str, dict[int, str]]:
    return {input_name: {2: "height", 3: "width"}, output_name: {2: "feat_height", 3: "feat_width"}}



__all__ = [
    "GraphSpec",
    "PreparedBackbone",
    "write_bundle",
    "export_graph",
    "verify_graph",
    "feature_dynamic_axes",
]
