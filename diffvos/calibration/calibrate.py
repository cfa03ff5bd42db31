"""``diffvos calibrate``: FP32 bundle + frames -> INT8 (Q/DQ) bundle with an accuracy report.

The graph's real input is x_t, so the calibration inputs are made by the runtime's own
:class:`FeatureExtractor` (preprocessing, VAE for latent models, the seeded noise bank): its
feature session is wrapped by a recorder that keeps each x_t it is fed. Nothing of the noise
injection is re-implemented here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

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
from diffvos.calibration.report import feature_agreement, format_report, mask_iou
from diffvos.calibration.trt_cache import DEFAULT_TRT_VERSION, write_cache
from diffvos.runtime.atomic import staged_directory
from diffvos.runtime.bundle import FEATURES_GRAPH, GraphEntry, Manifest, read_manifest, sha256_file, write_manifest
from diffvos.runtime.errors import BundleError, InputError

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


class _Recorder:
    """Stands in for the extractor's feature session: keeps the x_t fed to it and, when
    ``forward`` is set, also runs the real session."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.forward = False
        self.last: np.ndarray | None = None

    def run(self, names, feed):
        (x,) = feed.values()
        self.last = np.array(x, copy=True)
        if self.forward:
            return self.session.run(names, feed)
        return [np.zeros((1, 1, 1, 1), np.float32)]

    def __getattr__(self, name: str):
        return getattr(self.session, name)


def _extractor(bundle: Path, opts: CalibrationOptions):
    from diffvos.runtime.features import FeatureExtractor

    ext = FeatureExtractor(bundle, backend="cpu", threads=opts.threads, seed=opts.seed,
                           fresh_noise=opts.fresh_noise, quiet=True)
    recorder = _Recorder(ext.session)
    ext.session = recorder
    return ext, recorder


def runtime_inputs(extractor, recorder: _Recorder, frames: Iterator[np.ndarray], forward: bool = False):
    """Yield (x_t, fp32 features or None) for each BGR frame, made by the runtime's own code."""
    for bgr in frames:
        recorder.forward = forward
        feats = extractor(bgr)
        yield recorder.last, (feats[None].copy() if forward else None)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(session, feed: dict[str, np.ndarray], runs: int) -> float:
    session.run(None, feed)  # warm-up
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def evaluate(path: Path, input_name: str, inputs: list[np.ndarray], refs: list[np.ndarray], threads: int) -> tuple[dict, Any]:
    sess = _session(path, threads)
    outs = [sess.run(None, {input_name: x})[0] for x in inputs]
    return feature_agreement(refs, outs), sess


def sensitivity_table(model: Path, work: Path, ranges: Path, config: QuantConfig, input_name: str,
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
        acc, _ = evaluate(out, input_name, [x], [ref], threads)
        rows.append({"node": name, "op": op, "cosine": acc["min_cosine"], "max_rel_error": acc["max_rel_error"]})
    rows.sort(key=lambda r: r["cosine"])
    return rows


def read_first_mask(path: str | Path) -> np.ndarray:
    """Palette PNG -> its indices; a 0/255 image -> 0/1."""
    from PIL import Image

    try:
        img = Image.open(path)
        arr = np.array(img if img.mode in ("P", "L") else img.convert("L"))
    except OSError as exc:
        raise InputError(f"unreadable mask ({exc})", path) from exc
    if img.mode != "P" and arr.max() > 1:
        arr = (arr > 127).astype(np.uint8)
    ids = [int(i) for i in np.unique(arr) if i]
    if not ids:
        raise InputError("mask has no object", path)
    lut = np.zeros(256, np.uint8)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[arr]


def mask_agreement(fp32_bundle: Path, candidate_bundle: Path, video: str, mask: str, opts: CalibrationOptions) -> dict[str, Any]:
    """Track the held-out video with both bundles (same seed) and compare the label maps."""
    try:
        from diffvos.runtime.features import FeatureExtractor
        from diffvos.runtime.tracker import Tracker
    except ImportError as exc:  # the propagation part of the runtime is absent in this build
        return {"skipped": f"tracker unavailable ({exc})"}
    pool = FramePool([video])
    labels = read_first_mask(mask)
    k = int(labels.max())
    n = min(len(pool), opts.heldout_max_frames) if opts.heldout_max_frames else len(pool)
    trackers = [Tracker(FeatureExtractor(b, backend="cpu", threads=opts.threads, seed=opts.seed, quiet=True))
                for b in (fp32_bundle, candidate_bundle)]
    ious = []
    for i in range(n):
        bgr = pool.read(i)
        if i == 0:
            if labels.shape != bgr.shape[:2]:
                raise InputError(f"mask is {labels.shape[1]}x{labels.shape[0]}, frames are "
                                 f"{bgr.shape[1]}x{bgr.shape[0]}", mask)
            for t in trackers:
                t.start(bgr, labels)
            continue
        a, b = (t.step(bgr).labels for t in trackers)
        ious.append(mask_iou(a, b, k))
    if not ious:
        return {"skipped": "held-out video has a single frame"}
    return {"video": str(video), "frames": len(ious), "objects": k, "mean_iou": float(np.mean(ious)),
            "min_iou": float(np.min(ious))}


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
    input_name = next(iter(entry.inputs))
    pool = FramePool(frames)
    calib_idx, held_idx = split_indices(len(pool), opts.num_frames, opts.heldout)
    if not held_idx:
        raise InputError(f"need more frames than --num-frames ({len(pool)} given) to keep held-out frames for the report")
    extractor, recorder = _extractor(bundle, opts)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffvos-calib-") as tmp:
        work = Path(tmp)
        ranges_path = work / RANGES_NAME
        log(f"calibrating on {len(calib_idx)} frames ({opts.method}) ...")
        configs = opts.configs or candidate_configs(opts.target)
        xs = (x for x, _ in runtime_inputs(extractor, recorder, (pool.read(i) for i in calib_idx)))
        ranges = calibrate_ranges(src_graph, input_name, xs, method=opts.method, percentile=opts.percentile,
                                  symmetric=opts.target == "tensorrt", workdir=work, cache_path=ranges_path,
                                  op_types=op_types_to_calibrate(configs))
        log(f"held-out reference: {len(held_idx)} frames through the FP32 graph ...")
        held = list(runtime_inputs(extractor, recorder, (pool.read(i) for i in held_idx), forward=True))
        hx, hrefs = [x for x, _ in held], [r for _, r in held]
        fp32_ms = _median_ms(recorder.session, {input_name: hx[0]}, opts.time_runs) if opts.time_runs else None
        candidates = []
        for cfg in configs:
            path = work / f"q_{cfg.name}.onnx"
            quantize_graph(src_graph, path, ranges_path, cfg)
            acc, sess = evaluate(path, input_name, hx, hrefs, opts.threads)
            ms = _median_ms(sess, {input_name: hx[0]}, opts.time_runs) if opts.time_runs else None
            cand = Candidate(cfg, path, acc["min_cosine"], acc["max_rel_error"], ms,
                             (fp32_ms / ms) if (ms and fp32_ms) else None)
            log(f"  {cfg.name}: cosine {cand.cosine:.5f}" + (f", {ms:.1f} ms ({cand.speedup:.2f}x)" if ms else ""))
            candidates.append(cand)
            del sess
        best = choose(candidates, opts.min_cosine)
        sens = []
        if opts.sensitivity:
            sens = sensitivity_table(src_graph, work, ranges_path, best.config, input_name, hx[0], hrefs[0],
                                     opts.threads, opts.sensitivity_limit, log)
        accuracy, _ = evaluate(best.path, input_name, hx, hrefs, opts.threads)
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
            new = Manifest(**{**manifest.__dict__, "graphs": graphs, "precision": "int8",
                              "extra": {**manifest.extra, "calibration": report, "source_bundle": str(bundle)}})
            write_manifest(stage, new)
            if opts.heldout_video and opts.heldout_mask:
                log("mask agreement on the held-out video ...")
                report["masks"] = mask_agreement(bundle, stage, opts.heldout_video, opts.heldout_mask, opts)
            else:
                report["masks"] = {"skipped": "no --heldout-video/--heldout-mask given"}
            iou_ok = report["masks"].get("mean_iou", 1.0) >= opts.min_iou
            report["passed"] = bool(accuracy["min_cosine"] >= opts.min_cosine and iou_ok)
            report["seconds"] = round(time.perf_counter() - t_start, 1)
            write_manifest(stage, new)  # the same manifest object, now with masks and the verdict
    log(format_report(report))
    return report
