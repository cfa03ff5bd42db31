"""FP16 conversion of a bundle: an FP16-typed graph (float32 I/O) for TensorRT's strongly typed
networks, which ONNX Runtime also loads, so its accuracy is checked on the CPU.

onnxconverter-common's converter does the conversion. Two repairs follow it:

* it retypes every ``value_info`` to float16 but leaves the graph's own ``Cast(to=FLOAT)``
  nodes alone (diffusers U-Nets cast the time-step and the attention scale this way), so ONNX
  Runtime rejects the graph ("Type (tensor(float16)) of output arg ... does not match expected
  type (tensor(float))"): such casts are retargeted to float16 when they feed the fp16 region;
* numerically sensitive ops (normalisation statistics, softmax) can be kept in float32 through
  the converter's block list.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from diffvos.bundle import (
    Fp16Conversion,
    GraphEntry,
    Manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from diffvos.bundle.compare import compare
from diffvos.errors import BundleError, ExportError
from diffvos.io.atomic import staged_directory

# Ops whose statistics overflow or lose precision in fp16: kept float32 by default.
SENSITIVE_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization", "Softmax", "ReduceMean", "Pow")
_FLOAT, _FLOAT16 = 1, 10


def _elem_types(graph) -> dict[str, int]:
    types = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def repair_float_casts(model, blocked_ops: Iterable[str] = ()) -> list[str]:
    """Retarget ``Cast(to=FLOAT)`` nodes whose output the fp16 graph expects as float16.

    A cast's output is expected in float16 when its declared type says so, or (undeclared) when
    a consumer is an op converted to fp16 (not blocked, not itself a cast). Returns the names of
    the repaired nodes.
    """
    blocked = set(blocked_ops)
    graph = model.graph
    types = _elem_types(graph)
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    fixed = []
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        to = next((a for a in node.attribute if a.name == "to"), None)
        if to is None or to.i != _FLOAT or node.output[0] in outputs:
            continue
        declared = types.get(node.output[0])
        users = consumers.get(node.output[0], [])
        wants16 = declared == _FLOAT16 or (
            declared is None and any(u.op_type != "Cast" and u.op_type not in blocked for u in users)
        )
        if wants16 and not all(u.op_type in blocked for u in users):
            to.i = _FLOAT16
            fixed.append(node.name)
    return fixed


def convert_model_fp16(model, keep_ops: Iterable[str] = SENSITIVE_OPS, keep_io_types: bool = True):
    """ONNX ModelProto (float32) -> (fp16 ModelProto, facts)."""
    import onnx
    from onnxconverter_common import float16

    block = list(float16.DEFAULT_OP_BLOCK_LIST) + [op for op in keep_ops if op not in float16.DEFAULT_OP_BLOCK_LIST]
    with warnings.catch_warnings():  # one warning per tiny weight flushed to fp16's smallest value
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=block,
                                                     disable_shape_infer=False)
    fixed = repair_float_casts(converted, block)
    onnx.checker.check_model(converted)
    return converted, {"kept_float32_ops": sorted(set(keep_ops)), "repaired_casts": fixed}


def check_runs(path: str | Path, sample: np.ndarray) -> np.ndarray:
    """Load and run the graph in ONNX Runtime on the CPU; raise ExportError with ORT's reason."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: sample})[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ExportError(f"ONNX Runtime rejects the fp16 graph: {str(exc).splitlines()[0]}", path) from exc


def convert_bundle_fp16(
    bundle: str | Path,
    output: str | Path,
    keep_ops: Iterable[str] = SENSITIVE_OPS,
    min_cosine: float = 0.999,
    force: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Manifest:
    """FP32 bundle -> FP16 bundle, checked in ONNX Runtime against the FP32 graph on a noisy input."""
    import onnx

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.precision != "fp32":
        raise BundleError(f"fp16 conversion needs an fp32 bundle, this one is {manifest.precision}", bundle)
    keep_ops = tuple(keep_ops)
    facts: dict[str, Any] = {}
    verification: dict[str, Any] = {}
    with staged_directory(output, force=force) as stage:
        graphs = {}
        for name, entry in manifest.graphs.items():
            if entry.external_data:
                raise BundleError("graphs with external weights are not supported by the fp16 conversion yet",
                                  bundle / entry.file)
            t0 = time.perf_counter()
            model16, facts[name] = convert_model_fp16(onnx.load(str(bundle / entry.file)), keep_ops)
            onnx.save(model16, str(stage / entry.file))
            facts[name]["seconds"] = round(time.perf_counter() - t0, 2)
            # verification input: a concrete shape for each dynamic dimension
            shape = [d if isinstance(d, int) and d > 0 else s for d, s in
                     zip(next(iter(entry.inputs.values())), _concrete(manifest, entry))]
            x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
            ref = check_runs(bundle / entry.file, x)
            got = check_runs(stage / entry.file, x)
            result = compare(ref, got)
            result.tolerance = {"min_cosine": min_cosine}
            verification[name] = result
            log(f"fp16 '{name}': cosine {result.cosine:.6f}, relative error {result.max_rel_error:.2e}"
                + (f", repaired {len(facts[name]['repaired_casts'])} Cast(to=float) nodes" if facts[name]["repaired_casts"] else ""))
            if result.cosine < min_cosine:
                raise ExportError(f"fp16 graph '{name}' disagrees with fp32: cosine {result.cosine:.6f} < {min_cosine}; "
                                  f"keep more ops in float32 (now: {', '.join(keep_ops) or 'none'})", stage / entry.file)
            graphs[name] = GraphEntry(entry.file, sha256_file(stage / entry.file), entry.inputs, entry.outputs,
                                      precision="fp16")
        for extra_file in ("calibration.cache",):
            if (bundle / extra_file).is_file():
                shutil.copyfile(bundle / extra_file, stage / extra_file)
        new = replace(manifest, graphs=graphs, precision="fp16", tensorrt={},
                      fp16=Fp16Conversion(graphs=facts, verification=verification, source_bundle=str(bundle)))
        write_manifest(stage, new)
    return new


def _concrete(manifest: Manifest, entry: GraphEntry) -> list[int]:
    """A concrete input shape for verification: the export size, or the dynamic range's minimum."""
    shape = next(iter(entry.inputs.values()))
    fallback = [manifest.export.height, manifest.export.width] if manifest.export else (manifest.min_size or [64, 64])
    h = manifest.height or fallback[0]
    w = manifest.width or fallback[1]
    dims = [manifest.ensemble, manifest.input_channels, h, w]
    return dims if len(shape) == 4 else [int(d) if isinstance(d, int) else 1 for d in shape]
