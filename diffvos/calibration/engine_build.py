"""``diffvos build-engine``: every ONNX graph of a bundle -> a TensorRT plan, as a strongly typed network.

The precision comes from the graph itself (FP16-typed tensors, or Q/DQ nodes for INT8): no
builder precision flags, no implicit calibration (deprecated in TensorRT 10.1/10.12, removed in
11). A Stable Diffusion bundle has two graphs (``vae_encoder`` and ``features``); both are built,
with one timing cache. Dynamic graphs get one optimisation profile over the frame sizes of
:func:`diffvos.bundle.sizes.profile_sizes`: by default up to the square of 480p's long side, not
the bundle's whole range, because an execution context allocates for the profile's maximum
(``--max-size`` raises it); a feature graph with a stream axis gets 1 .. ``streams.max_streams``
streams of E draws. The plans are written into the bundle only once all are built, and
the manifest records per graph the TensorRT version, GPU and compute capability, which the
``trt`` backend checks before loading. Torch-free; ``tensorrt`` and cuda-python are imported on use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from diffvos.bundle import TensorRTPlan, read_manifest, sha256_file, write_manifest
from diffvos.bundle.sizes import HW, graph_profile
from diffvos.calibration.qdq_check import check_tensorrt
from diffvos.calibration.qdq_graph import load
from diffvos.config import TRT_OPT_LEVEL, TRT_WORKSPACE_GB
from diffvos.errors import BundleError, ExportError, InputError
from diffvos.io.atomic import write_bytes_atomic
from diffvos.runtime.caches import timing_cache_file
from diffvos.runtime.cuda_device import Cuda, shared_cuda
from diffvos.runtime.trt_api import create, import_trt, logged, make_logger

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected the graph: {errors or logged(logger) or 'no reason given'}",
                          onnx_path)


def build_plan(onnx_path: str | Path, input_name: str, shapes: Profile, *, workspace_gb: float = TRT_WORKSPACE_GB,
               timing_cache: str | Path | None = None, opt_level: int = TRT_OPT_LEVEL, trt: Any = None,
               log: Callable[[str], None] = print) -> bytes:
    """Build a serialized engine from an ONNX graph as a strongly typed network; ``timing_cache``
    (a file) is read and updated."""
    trt = trt or import_trt()
    onnx_path = Path(onnx_path)
    if not 0 <= opt_level <= 5:
        raise InputError(f"--opt-level must be 0..5, got {opt_level}")
    if workspace_gb <= 0:
        raise InputError(f"--workspace must be positive (GB), got {workspace_gb}")
    logger = make_logger(trt, echo="ERROR")
    builder = create(trt, "Builder", logger)
    # STRONGLY_TYPED is bit 1 in TensorRT 10 and bit 0 in 11 (where it is always on): shift its own value
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
    log(f"building {onnx_path.name} with TensorRT {trt.__version__} (strongly typed, opt level {opt_level}, "
        f"input {list(lo)}" + (f" .. {list(hi)}, optimised for {list(opt)}" if lo != hi else "") + ") ...")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build the engine: {logged(logger, 5) or 'no reason logged'}", onnx_path)
    if timing_cache:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_bundle_engines(bundle: str | Path, *, graphs: list[str] | None = None,
                         workspace_gb: float = TRT_WORKSPACE_GB, timing_cache: str | Path | None = None,
                         opt_level: int = TRT_OPT_LEVEL, opt_hw: HW | None = None, max_hw: HW | None = None,
                         opt_streams: int | None = None, trt: Any = None, cuda: Cuda | None = None, device: int = 0,
                         log: Callable[[str], None] = print) -> dict[str, TensorRTPlan]:
    """Build the plans of ``graphs`` (default: every graph of the bundle) into the bundle and
    return the facts recorded in its manifest. Nothing is written unless every build succeeds."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    names = list(graphs or manifest.graphs)
    unknown = [g for g in names if g not in manifest.graphs]
    if unknown:
        raise BundleError(f"bundle has no graph {', '.join(map(repr, unknown))} (it has "
                          f"{', '.join(manifest.graphs)})", bundle)
    profiles = {g: graph_profile(manifest, g, opt_hw, max_hw, opt_streams) for g in names}  # errors before any work
    for g in names:  # a Q/DQ graph TensorRT would reject: say where, before any GPU work
        if manifest.graphs[g].precision == "int8":
            rules = check_tensorrt(load(bundle / manifest.graphs[g].file))
            if rules.violations:
                raise ExportError(f"graph '{g}' breaks TensorRT's Q/DQ rules ({len(rules.violations)} violations, e.g. "
                                  f"{rules.violations[0]}); calibrate with --target tensorrt", bundle / manifest.graphs[g].file)
    trt = trt or import_trt()
    cuda = cuda or shared_cuda(device)
    gpu = cuda.device_facts(device)
    cuda.use(device)
    if timing_cache is None:
        timing_cache = timing_cache_file(gpu["gpu"], gpu["compute_capability"], trt.__version__)
    built: dict[str, tuple[bytes, float]] = {}
    for g in names:
        entry = manifest.graphs[g]
        t0 = time.perf_counter()
        plan = build_plan(bundle / entry.file, entry.input_name, profiles[g], workspace_gb=workspace_gb,
                          timing_cache=timing_cache, opt_level=opt_level, trt=trt, log=log)
        built[g] = (plan, time.perf_counter() - t0)
    facts: dict[str, TensorRTPlan] = {}
    for g, (plan, seconds) in built.items():
        lo, opt, hi = profiles[g]
        plan_file = f"{g}.plan"
        write_bytes_atomic(bundle / plan_file, plan)
        facts[g] = TensorRTPlan(
            plan=plan_file, sha256=sha256_file(bundle / plan_file), trt_version=trt.__version__, gpu=gpu["gpu"],
            compute_capability=gpu["compute_capability"], precision=manifest.graphs[g].precision,
            strongly_typed=True, profile={"min": list(lo), "opt": list(opt), "max": list(hi)}, opt_level=opt_level,
            workspace_gb=workspace_gb, build_seconds=round(seconds, 1),
        )
        log(f"engine written to {bundle / plan_file} ({len(plan) / 1e6:.1f} MB)")
    manifest.tensorrt.update(facts)
    write_manifest(bundle, manifest)
    log(f"built {', '.join(facts)} for {gpu['gpu']} (compute capability {gpu['compute_capability']}); "
        f"timing cache {timing_cache}")
    return facts
