"""``diffvos calibrate``: FP32 bundle + frames -> INT8 (Q/DQ) bundle with an accuracy report.

The graph's real input is x_t, so the calibration inputs are made by the runtime's own
:class:`~diffvos.runtime.features.Features` (preprocessing, VAE for latent models, the seeded
noise bank): ``Features.prepare`` gives the feed of a calibration frame, and the engine's public
observer hook records the feed and the FP32 output of each held-out frame. Nothing of the noise
injection is re-implemented here; the mask agreement tracks with ``Session.step`` like any user.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from diffvos.bundle import (
    FEATURES_GRAPH,
    Calibration,
    GraphEntry,
    read_manifest,
    sha256_file,
    write_manifest,
)
from diffvos.calibration.frames import FramePool, split_indices
from diffvos.calibration.quantize import (
    Candidate,
    QuantConfig,
    calibrate_ranges,
    candidate_configs,
    choose,
    op_types_to_calibrate,
    quantize_graph,
)
from diffvos.calibration.report import feature_agreement, format_report
from diffvos.calibration.trt_cache import DEFAULT_TRT_VERSION, write_cache
from diffvos.config import SessionConfig
from diffvos.errors import BundleError, InputError
from diffvos.evaluation.davis import mean_object_iou
from diffvos.io.atomic import staged_directory
from diffvos.io.frames import open_frames
from diffvos.io.masks import check_mask_size, read_mask
from diffvos.runtime.engine import Engine
from diffvos.runtime.features import Features
from diffvos.runtime.ort_engine import OrtLoader
from diffvos.runtime.session import Runtime

TRT_CACHE_NAME = "calibration.cache"
RANGES_NAME = "calibration_ranges.json"


@dataclass
class CalibrationOptions:
    num_frames: int = 64
    heldout: int = 8
    method: str = "entropy"
    percentile: float = 99.999
    target: str = "tensorrt"
    configs: list[QuantConfig] | None = None  # None: candidate_configs(target)
    min_cosine: float = 0.99
    min_iou: float = 0.9
    seed: int = 0  # the runtime's default noise seed: calibrate on the noise it will see
    fresh_noise: bool = False
    sensitivity: bool = True
    sensitivity_limit: int = 12  # nodes spread through the graph; 0: every quantised node
    time_runs: int = 3
    threads: int = 0
    trt_version: str = DEFAULT_TRT_VERSION
    heldout_video: str | None = None
    heldout_mask: str | None = None
    heldout_max_frames: int = 30
    extra: dict[str, Any] = field(default_factory=dict)


def _features(runtime: Runtime, opts: CalibrationOptions) -> Features:
    return Features(runtime.manifest, runtime.engines, seed=opts.seed, fresh_noise=opts.fresh_noise)


def calibration_inputs(features: Features, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """x_t of each BGR frame, made by the runtime's own preprocessing and noise (no graph run)."""
    for bgr in frames:
        (x,) = features.prepare(bgr).values()
        yield x.copy()


def heldout_pairs(features: Features, frames: Iterator[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x_t, FP32 features) of each BGR frame, recorded through the engine's observer hook."""
    pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def record(feed, outputs) -> None:
        (x,), (y,) = feed.values(), outputs.values()
        pairs.append((np.array(x, copy=True), np.array(y, copy=True)))

    with features.engine.observe(record):
        for bgr in frames:
            features(bgr)
    return pairs


def _median_ms(engine: Engine, feed: dict[str, np.ndarray], runs: int) -> float:
    engine.infer(feed)  # warm-up
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        engine.infer(feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def evaluate(path: Path, inputs: list[np.ndarray], refs: list[np.ndarray], threads: int) -> tuple[dict, Engine]:
    """Feature agreement of the graph at ``path`` with the FP32 references, on the CPU."""
    engine = OrtLoader(path, backend="cpu", threads=threads)()
    name = engine.inputs[0].name
    outs = [next(iter(engine.infer({name: x}).values())) for x in inputs]
    return feature_agreement(refs, outs), engine


def sensitivity_table(model: Path, work: Path, ranges: Path, config: QuantConfig,
                      x: np.ndarray, ref: np.ndarray, threads: int, limit: int = 0,
                      log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Cosine vs FP32 with only one node quantised, for each node ``config`` would quantise."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    ops = set(config.op_types) if config.op_types else {"Conv", "MatMul", "Gemm"}
    nodes = [(n.name, n.op_type) for n in graph.node if n.op_type in ops]
    if limit and len(nodes) > limit:
        nodes = [nodes[i] for i in np.linspace(0, len(nodes) - 1, limit).round().astype(int)]
    log(f"sensitivity: quantising each of {len(nodes)} nodes alone ...")
    rows = []
    single = QuantConfig("single", config.op_types, keep_first_last=False, per_channel=config.per_channel,
                         target=config.target)
    for name, op in nodes:
        out = work / "single.onnx"
        quantize_graph(model, out, ranges, single, nodes_to_quantize=[name])
        acc, _ = evaluate(out, [x], [ref], threads)
        rows.append({"node": name, "op": op, "cosine": acc["min_cosine"], "max_rel_error": acc["max_rel_error"]})
    rows.sort(key=lambda r: r["cosine"])
    return rows


def mask_agreement(fp32_bundle: Path, candidate_bundle: Path, video: str, mask: str, opts: CalibrationOptions) -> dict[str, Any]:
    """Track the held-out video with both bundles (same seed and options, as a user would track)
    and compare the label maps frame by frame."""
    source = open_frames(video)
    first = read_mask(mask)
    labels = check_mask_size(first, source.size)
    n = min(len(source), opts.heldout_max_frames) if opts.heldout_max_frames else len(source)
    config = SessionConfig(seed=opts.seed, fresh_noise=opts.fresh_noise)
    height, width = source.size
    sessions = [Runtime(b, backend="cpu", threads=opts.threads).session(width, height, config)
                for b in (fp32_bundle, candidate_bundle)]
    ious = []
    for frame in source.select(range(n)):
        a, b = (s.step(frame.bgr, mask=labels if frame.index == 0 else None) for s in sessions)
        if frame.index:
            ious.append(mean_object_iou(a, b, first.object_ids))
    if not ious:
        return {"skipped": "held-out video has a single frame"}
    return {"video": str(video), "frames": len(ious), "objects": len(first.object_ids),
            "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious))}


def calibrate_bundle(bundle: str | Path, frames: list[str | Path], output: str | Path,
                     opts: CalibrationOptions | None = None, force: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate, choose a configuration by measurement, write the INT8 bundle; return the report."""
    opts = opts or CalibrationOptions()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.precision != "fp32":
        raise BundleError(f"calibration needs an fp32 bundle, this one is {manifest.precision}", bundle)
    entry = manifest.graphs[FEATURES_GRAPH]
    if entry.external_data:
        raise BundleError("graphs with external weights are not supported by calibrate yet", bundle / entry.file)
    src_graph = bundle / entry.file
    input_name = entry.input_name
    pool = FramePool(frames)
    calib_idx, held_idx = split_indices(len(pool), opts.num_frames, opts.heldout)
    if not held_idx:
        raise InputError(f"need more frames than --num-frames ({len(pool)} given) to keep held-out frames for the report")
    features = _features(Runtime(bundle, backend="cpu", threads=opts.threads), opts)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffvos-calib-") as tmp:
        work = Path(tmp)
        ranges_path = work / RANGES_NAME
        log(f"calibrating on {len(calib_idx)} frames ({opts.method}) ...")
        configs = opts.configs or candidate_configs(opts.target)
        xs = calibration_inputs(features, pool.frames(calib_idx))
        ranges = calibrate_ranges(src_graph, input_name, xs, method=opts.method, percentile=opts.percentile,
                                  symmetric=opts.target == "tensorrt", workdir=work, cache_path=ranges_path,
                                  op_types=op_types_to_calibrate(configs))
        log(f"held-out reference: {len(held_idx)} frames through the FP32 graph ...")
        held = heldout_pairs(features, pool.frames(held_idx))
        hx, hrefs = [x for x, _ in held], [r for _, r in held]
        fp32_ms = _median_ms(features.engine, {input_name: hx[0]}, opts.time_runs) if opts.time_runs else None
        candidates = []
        for cfg in configs:
            path = work / f"q_{cfg.name}.onnx"
            quantize_graph(src_graph, path, ranges_path, cfg)
            acc, engine = evaluate(path, hx, hrefs, opts.threads)
            ms = _median_ms(engine, {input_name: hx[0]}, opts.time_runs) if opts.time_runs else None
            cand = Candidate(cfg, path, acc["min_cosine"], acc["max_rel_error"], ms,
                             (fp32_ms / ms) if (ms and fp32_ms) else None)
            log(f"  {cfg.name}: cosine {cand.cosine:.5f}" + (f", {ms:.1f} ms ({cand.speedup:.2f}x)" if ms else ""))
            candidates.append(cand)
            engine.close()
        best = choose(candidates, opts.min_cosine)
        sens = []
        if opts.sensitivity:
            sens = sensitivity_table(src_graph, work, ranges_path, best.config, hx[0], hrefs[0],
                                     opts.threads, opts.sensitivity_limit, log)
        accuracy, _ = evaluate(best.path, hx, hrefs, opts.threads)
        report: dict[str, Any] = {
            "method": opts.method,
            "calibration_frames": len(calib_idx),
            "heldout_frames": len(held_idx),
            "sources": [str(p) for p in frames],
            "seed": opts.seed,
            "fresh_noise": opts.fresh_noise,
            "chosen": best.config.describe(),
            "candidates": [c.row() for c in candidates],
            "fp32_ms": fp32_ms,
            "accuracy": accuracy,
            "sensitivity": sens,
            "limits": {"min_cosine": opts.min_cosine, "min_iou": opts.min_iou},
            "trt_calibration_cache": {"file": TRT_CACHE_NAME, "trt_version": opts.trt_version,
                                      "applies_to": {"graph": str(src_graph), "sha256": entry.sha256}},
            "source_bundle": str(bundle),
        }
        with staged_directory(output, force=force) as stage:
            graphs: dict[str, GraphEntry] = {}
            for name, g in manifest.graphs.items():
                if name == FEATURES_GRAPH:
                    shutil.copyfile(best.path, stage / g.file)
                    graphs[name] = GraphEntry(g.file, sha256_file(stage / g.file), g.inputs, g.outputs, precision="int8")
                else:  # e.g. the VAE encoder stays as it is
                    for f in filter(None, (g.file, g.external_data)):
                        shutil.copyfile(bundle / f, stage / f)
                    graphs[name] = g
            shutil.copyfile(ranges_path, stage / RANGES_NAME)
            write_cache(stage / TRT_CACHE_NAME, ranges, opts.trt_version)
            write_manifest(stage, replace(manifest, graphs=graphs, precision="int8", tensorrt={}))
            if opts.heldout_video and opts.heldout_mask:
                log("mask agreement on the held-out video ...")
                report["masks"] = mask_agreement(bundle, stage, opts.heldout_video, opts.heldout_mask, opts)
            else:
                report["masks"] = {"skipped": "no --heldout-video/--heldout-mask given"}
            iou_ok = report["masks"].get("mean_iou", 1.0) >= opts.min_iou
            report["passed"] = bool(accuracy["min_cosine"] >= opts.min_cosine and iou_ok)
            report["seconds"] = round(time.perf_counter() - t_start, 1)
            write_manifest(stage, replace(manifest, graphs=graphs, precision="int8", tensorrt={},
                                          calibration=Calibration(**report)))
    log(format_report(report))
    return report
