"""``diffvos build-engine``: a bundle's ONNX graph -> TensorRT plan, as a strongly typed network.

The precision comes from the graph itself (FP16-typed tensors, or Q/DQ nodes for INT8): no
builder precision flags, no implicit calibration (deprecated in TensorRT 10.1/10.12, removed in
11). Dynamic bundles get one optimisation profile spanning their size range, and bundles with a stream
axis one spanning 1 .. max_streams streams. The plan is written
into the bundle and the manifest records the TensorRT version, GPU and compute capability, which
the ``trt`` backend checks before loading. Torch-free; ``tensorrt`` is imported on use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from diffvos.bundle import (
    FEATURES_GRAPH,
    GraphEntry,
    Manifest,
    TensorRTPlan,
    read_manifest,
    sha256_file,
    write_manifest,
)
from diffvos.bundle.sizes import method_size
from diffvos.errors import BundleError, ExportError, InputError
from diffvos.io.atomic import write_bytes_atomic
from diffvos.runtime.trt_engine import gpu_facts, import_cuda, import_trt

Shape = tuple[int, ...]


def profile_shapes(manifest: Manifest, entry: GraphEntry, opt_hw: tuple[int, int] | None = None,
                   opt_streams: int | None = None) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) input shapes. The batch axis spans 1 .. ``streams.max_streams`` streams of
    E draws (optimised for ``opt_streams``, default the manifest's). Static sizes: the fixed H, W.
    Dynamic ones: the manifest's size range, optimised for ``opt_hw`` (default: a 854x480 frame by
    METHOD's rule, clamped into the range)."""
    e, c = manifest.ensemble, manifest.input_channels
    streams = manifest.streams if entry is manifest.graphs.get(FEATURES_GRAPH) else None
    top = streams.max_streams if streams else 1
    opt_b = min(max(opt_streams or (streams.opt_streams if streams else 1), 1), top)
    if not manifest.dynamic:
        h, w = int(manifest.height), int(manifest.width)
        return (e, c, h, w), (opt_b * e, c, h, w), (top * e, c, h, w)
    if not (manifest.min_size and manifest.max_size):
        raise BundleError("dynamic bundle without min_size/max_size: re-export it with a size range")
    (lh, lw), (uh, uw) = manifest.min_size, manifest.max_size
    if opt_hw is None:
        p = manifest.preprocess
        opt_hw = method_size((480, 854), p.short_side, p.multiple)
    oh = min(max(opt_hw[0], lh), uh)
    ow = min(max(opt_hw[1], lw), uw)
    return (e, c, lh, lw), (opt_b * e, c, oh, ow), (top * e, c, uh, uw)


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the graph: {errors or 'no reason given'}", onnx_path)


def build_plan(onnx_path: str | Path, input_name: str, shapes: tuple[Shape, Shape, Shape], *,
               workspace_gb: float = 4.0, timing_cache: str | Path | None = None, opt_level: int = 3,
               trt: Any = None, log: Callable[[str], None] = print) -> bytes:
    """Build a serialized engine from an ONNX graph as a strongly typed network."""
    trt = trt or import_trt()
    onnx_path = Path(onnx_path)
    if not 0 <= opt_level <= 5:
        raise InputError(f"--opt-level must be 0..5, got {opt_level}")
    if workspace_gb <= 0:
        raise InputError(f"--workspace must be positive (GB), got {workspace_gb}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    _parse(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = opt_level
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    lo, opt, hi = shapes
    if lo != hi:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
    log(f"building TensorRT {trt.__version__} engine (strongly typed, opt level {opt_level}, input {list(lo)}"
        + (f" .. {list(hi)}" if lo != hi else "") + ") ...")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT failed to build the engine (see the TensorRT log above)", onnx_path)
    if timing_cache:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_bundle_engine(bundle: str | Path, *, workspace_gb: float = 4.0, timing_cache: str | Path | None = None,
                        opt_level: int = 3, opt_hw: tuple[int, int] | None = None, graph: str = FEATURES_GRAPH,
                        opt_streams: int | None = None, trt: Any = None, cuda: Any = None, device: int = 0,
                        log: Callable[[str], None] = print) -> TensorRTPlan:
    """Build the plan of one bundle graph into the bundle; return the facts recorded in the manifest."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    trt = trt or import_trt()
    cuda = cuda or import_cuda()
    gpu = gpu_facts(cuda, device)
    if graph not in manifest.graphs:
        raise BundleError(f"bundle has no graph '{graph}'", bundle)
    entry = manifest.graphs[graph]
    input_name = entry.input_name
    shapes = profile_shapes(manifest, entry, opt_hw, opt_streams)
    t0 = time.perf_counter()
    plan = build_plan(bundle / entry.file, input_name, shapes, workspace_gb=workspace_gb,
                      timing_cache=timing_cache, opt_level=opt_level, trt=trt, log=log)
    plan_file = f"{graph}.plan"
    write_bytes_atomic(bundle / plan_file, plan)
    facts = TensorRTPlan(
        plan=plan_file, sha256=sha256_file(bundle / plan_file), trt_version=trt.__version__, gpu=gpu["gpu"],
        compute_capability=gpu["compute_capability"], precision=entry.precision, strongly_typed=True,
        profile={"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}, opt_level=opt_level,
        workspace_gb=workspace_gb, build_seconds=round(time.perf_counter() - t0, 1),
    )
    manifest.tensorrt[graph] = facts
    write_manifest(bundle, manifest)
    log(f"engine written to {bundle / plan_file} ({len(plan) / 1e6:.1f} MB) for {gpu['gpu']} "
        f"(compute capability {gpu['compute_capability']})")
    return facts
