"""``diffvos calibrate``: FP32 bundle + frames -> INT8 (Q/DQ) bundle that keeps the masks, or nothing.

1. Calibration inputs are made by the runtime's own :class:`~diffvos.runtime.features.Features`
   (preprocessing, VAE, the seeded noise bank); held-out frames and their FP32 outputs are
   recorded through the engine's public observer hook. Entropy ranges, once.
2. Candidates (op-type sets) are quantised with TensorRT's Q/DQ placement; identical graphs are
   dropped (by hash) and the one with the most INT8 FLOPs is the search's start.
3. Keep-one-float sensitivity on held-out frames ranks the nodes; the mixed-precision search keeps
   the fewest of them float that pass the mask gate on the calibration videos' first frames
   (IoU against FP32 floored at FP32's own agreement under one grey level of input noise).
4. The final gate: masks through ``Session.step`` with the user's options on held-out videos
   (``--heldout-video``) or, by default, on the calibration videos scored on their
   non-calibration frames: IoU vs FP32 >= 0.98 (or the noise floor where that is lower) and J&F
   at most 0.5 points below FP32 where ground truth is given. Feature cosine is reported only.
   A TensorRT-target graph must also pass the Q/DQ rules (:mod:`~diffvos.calibration.qdq_check`).
5. Only a passing bundle is written; ``allow_failed`` writes a failed one, which the runtime
   refuses to load unless told ``allow_failed_calibration``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from diffvos.bundle import (
    FEATURES_GRAPH,
    Calibration,
    GraphEntry,
    MaskCheck,
    read_manifest,
    sha256_file,
    write_manifest,
)
from diffvos.calibration.frames import FramePool, split_indices
from diffvos.calibration.mask_gate import (
    Clip,
    cpu_runtime,
    failures,
    measure,
    open_clip,
    pooled,
    reference,
    verdict,
)
from diffvos.calibration.options import TARGETS, CalibrationOptions
from diffvos.calibration.qdq_check import check_tensorrt
from diffvos.calibration.qdq_graph import (
    derive,
    graph_sha256,
    int8_flop_fraction,
    load,
    name_nodes,
    node_costs,
    prune,
    quantised_nodes,
)
from diffvos.calibration.quantize import (
    Candidate,
    calibrate_ranges,
    candidate_configs,
    distinct,
    op_types_to_calibrate,
    quantize_graph,
)
from diffvos.calibration.report import format_report, graph_agreement
from diffvos.calibration.search import MixedPrecisionSearch
from diffvos.calibration.sensitivity import keep_float_table, ranking, spread
from diffvos.calibration.speed import cpu_speed
from diffvos.calibration.trt_cache import write_cache
from diffvos.errors import BundleError, InputError
from diffvos.io.atomic import prepare_output_dir, staged_directory
from diffvos.runtime.features import Features
from diffvos.runtime.session import Runtime

TRT_CACHE_NAME = "calibration.cache"
RANGES_NAME = "calibration_ranges.json"


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


def _gate_clips(frames: Sequence[str | Path], pool: FramePool, calib_idx: Sequence[int],
                opts: CalibrationOptions, log: Callable[[str], None]) -> tuple[list[Clip], list[Clip]]:
    """(proxy clips for the search, final clips): opened before any long work so that a bad
    video or mask fails at once."""
    masks = list(opts.masks) if opts.masks is not None else [None] * len(frames)
    if len(masks) != len(frames):
        raise InputError(f"--masks gives {len(masks)} mask(s) for {len(frames)} --frames source(s): one per source, "
                         "in the same order ('-' for none)")
    proxy, final = [], []
    for k, (src, mask) in enumerate(zip(frames, masks)):
        length = len(pool.sources[k])
        if length < 3:
            log(f"  {src}: {length} frame(s), too short to track: not used by the mask gate")
            continue
        proxy.append(open_clip(src, mask, opts.proxy_frames, role="proxy"))
        if not opts.heldout_videos:
            lo = int(pool.offsets[k])
            calib_here = [i - lo for i in calib_idx if lo <= i < lo + length]
            final.append(open_clip(src, mask, opts.heldout_max_frames, unscored=calib_here, role="calibration"))
    for video, mask in opts.heldout_videos:
        final.append(open_clip(video, mask, opts.heldout_max_frames, role="heldout"))
    if not final:
        raise InputError("no video to check the masks on: the --frames sources are single images; give "
                         "--heldout-video/--heldout-mask")
    return proxy, final


def _write_bundle(bundle: Path, manifest: Any, graph: Path, ranges_path: Path, ranges: Any, report: Calibration,
                  output: str | Path, force: bool, trt_version: str) -> None:
    with staged_directory(output, force=force) as stage:
        graphs: dict[str, GraphEntry] = {}
        for name, g in manifest.graphs.items():
            if name == FEATURES_GRAPH:
                shutil.copyfile(graph, stage / g.file)
                graphs[name] = GraphEntry(g.file, sha256_file(stage / g.file), g.inputs, g.outputs, precision="int8")
            else:  # e.g. the VAE encoder stays as it is
                for f in filter(None, (g.file, g.external_data)):
                    shutil.copyfile(bundle / f, stage / f)
                graphs[name] = g
        shutil.copyfile(ranges_path, stage / RANGES_NAME)
        write_cache(stage / TRT_CACHE_NAME, ranges, trt_version)
        write_manifest(stage, replace(manifest, graphs=graphs, precision="int8", tensorrt={}, calibration=report))


def calibrate_bundle(bundle: str | Path, frames: Sequence[str | Path], output: str | Path,
                     opts: CalibrationOptions | None = None, force: bool = False,
                     log: Callable[[str], None] = print) -> Calibration:
    """Calibrate, keep the fewest nodes float that pass the mask gate, and write the INT8 bundle
    if it passes (or ``opts.allow_failed``); return the report either way."""
    opts = opts or CalibrationOptions()
    if opts.target not in TARGETS:
        raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {opts.target!r}")
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.precision != "fp32":
        raise BundleError(f"calibration needs an fp32 bundle, this one is {manifest.precision}", bundle)
    entry = manifest.graphs[FEATURES_GRAPH]
    if entry.external_data:
        raise BundleError("graphs with external weights are not supported by calibrate yet", bundle / entry.file)
    prepare_output_dir(output, force)  # refuse a non-empty output now, not after the long part
    cfg, limits = opts.session, opts.limits
    pool = FramePool(list(frames))
    calib_idx, held_idx = split_indices(len(pool), opts.num_frames, opts.heldout)
    if not held_idx:
        raise InputError(f"need more frames than --num-frames ({len(pool)} given) to keep held-out frames for the report")
    proxy_clips, final_clips = _gate_clips(frames, pool, calib_idx, opts, log)
    fp32 = Runtime(bundle, backend="cpu", threads=opts.threads)
    features = Features(fp32.manifest, fp32.engines, cfg.seed, cfg.fresh_noise, cfg.inversion_steps)
    noisy = cpu_runtime(bundle, manifest, opts.threads, noise_levels=limits.noise_level, share=fp32) \
        if limits.noise_level else None
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffvos-calib-") as tmp:
        work = Path(tmp)
        float_model = name_nodes(load(bundle / entry.file))
        src = work / "float.onnx"
        import onnx

        onnx.save(float_model, str(src))
        ranges_path = work / RANGES_NAME
        configs = opts.configs or candidate_configs(opts.target, opts.exclude)
        log(f"calibrating on {len(calib_idx)} frames ({opts.method}) ...")
        xs = calibration_inputs(features, pool.frames(calib_idx))
        ranges = calibrate_ranges(src, entry.input_name, xs, method=opts.method, percentile=opts.percentile,
                                  symmetric=opts.target == "tensorrt", workdir=work, cache_path=ranges_path,
                                  op_types=op_types_to_calibrate(configs))
        log(f"held-out reference: {len(held_idx)} frames through the FP32 graph ...")
        held = heldout_pairs(features, pool.frames(held_idx))
        hx, hrefs = [x for x, _ in held], [r for _, r in held]
        costs = node_costs(float_model, hx[0].shape)

        candidates = []
        for c in configs:
            path = work / f"q_{c.name}.onnx"
            quantize_graph(src, path, ranges_path, c)
            model = prune(load(path))[0]
            onnx.save(model, str(path))
            cand = Candidate(c, path, graph_sha256(model))
            candidates.append(cand)
        unique = distinct(candidates)
        for cand in unique:
            model = load(cand.path)
            acc = graph_agreement(cand.path, hx, hrefs, opts.threads)
            qdq = check_tensorrt(model)
            cand.facts = {"int8_flop_fraction": int8_flop_fraction(costs, quantised_nodes(model)),
                          "min_cosine": acc["min_cosine"], "mean_cosine": acc["mean_cosine"],
                          "quantize_nodes": qdq.quantize, "tensorrt_violations": len(qdq.violations)}
        for cand in candidates:
            note = f"identical graph to '{cand.same_as}'" if cand.same_as else (
                f"INT8 FLOPs {cand.facts['int8_flop_fraction'] or 0:.1%}, cosine mean {cand.facts['mean_cosine']:.4f}")
            log(f"  candidate {cand.config.name}: {note}")
        base = max(unique, key=lambda c: c.facts["int8_flop_fraction"] or 0.0)
        base_model = load(base.path)
        base_int8 = quantised_nodes(base_model)
        int8_nodes = [n.name for n in base_model.graph.node if n.name in base_int8]

        search = None
        sens: list[dict[str, Any]] = []
        kept: list[str] = []
        if opts.search and int8_nodes and proxy_clips:
            nodes = spread(int8_nodes, opts.sensitivity_nodes)
            log(f"sensitivity: {len(nodes)} nodes kept float one at a time, {len(hx)} held-out frames ...")
            sens, base_cos = keep_float_table(base_model, float_model, nodes, costs, hx, hrefs, work, opts.threads, log)
            order = ranking(sens, int8_nodes)
            log(f"proxy references: FP32 on the first {opts.proxy_frames} frames of {len(proxy_clips)} video(s)"
                + (f", and with {limits.noise_level:g} grey level(s) of input noise" if noisy else "") + " ...")
            refs = [reference(fp32, noisy, clip, cfg) for clip in proxy_clips]
            last: dict[str, list[MaskCheck]] = {}

            def gate(path: Path) -> dict[str, Any]:
                rt = cpu_runtime(bundle, manifest, opts.threads, features=path, share=fp32)
                results = [measure(rt, ref, cfg) for ref in refs]
                last[str(path)] = [verdict(ref, ious, jf, limits) for ref, (ious, jf) in zip(refs, results)]
                return pooled(refs, results, limits)

            log(f"mixed-precision search from '{base.config.name}' ({len(order)} INT8 nodes) ...")
            searcher = MixedPrecisionSearch(base_model, float_model, order, costs, gate, work, base.config.name, log)
            search = searcher.run()
            k = search.kept
            if k is None:  # nothing passed the proxy: the final gate will say by how much
                best = max(search.steps, key=lambda s: s.mean_iou - s.iou_limit)
                k = best.k
                log(f"  no k passed the proxy gate; checking the closest, keep {k}")
            search.proxy = last.get(str(searcher.path(k)), [])
            kept = order[:k]
            final_model = derive(base_model, float_model, kept)
        else:
            final_model = base_model
        final = work / "final.onnx"
        onnx.save(final_model, str(final))
        final_int8 = quantised_nodes(final_model)
        fraction = int8_flop_fraction(costs, final_int8)
        kept_float = [c.node for c in costs if c.node not in final_int8]
        qdq = check_tensorrt(final_model)

        log(f"held-out features ({len(hx)} frames) ...")
        accuracy = graph_agreement(final, hx, hrefs, opts.threads)
        log(f"mask gate on {len(final_clips)} video(s) through Session.step ...")
        candidate_rt = cpu_runtime(bundle, manifest, opts.threads, features=final, share=fp32)
        checks = []
        for clip in final_clips:
            ref = reference(fp32, noisy, clip, cfg)
            ious, jf = measure(candidate_rt, ref, cfg)
            checks.append(verdict(ref, ious, jf, limits))
        failed = failures(checks, limits)
        if opts.target == "tensorrt" and qdq.violations:
            failed.append(f"TensorRT Q/DQ rules: {len(qdq.violations)} violation(s), e.g. {qdq.violations[0]}")
        speed = cpu_speed(src, final, hx[0], opts.speed_runs, opts.threads) if opts.speed_runs else None
        advice = None
        if speed is not None:
            advice = speed.note if speed.speedup < 1 else "INT8 is for TensorRT; on the CPU compare with FP32 first"
        report = Calibration(
            method=opts.method, calibration_frames=len(calib_idx), heldout_frames=len(held_idx),
            sources=[str(p) for p in frames], seed=cfg.seed, fresh_noise=cfg.fresh_noise,
            chosen={**base.config.describe(), "kept_float_by_search": len(kept),
                    "quantiser": "onnxruntime.quantization.quantize_static (QDQ)"},
            candidates=[c.row() for c in candidates], accuracy=accuracy, limits=limits.as_dict(),
            passed=not failed, sensitivity=sens, fp32_ms=speed.fp32_ms if speed else None,
            trt_calibration_cache={"file": TRT_CACHE_NAME, "trt_version": opts.trt_version,
                                   "applies_to": {"graph": entry.file, "sha256": entry.sha256}},
            source_bundle=str(bundle), seconds=round(time.perf_counter() - t_start, 1), failures=failed,
            videos=checks, kept_float=kept_float, int8_flop_fraction=fraction, search=search, cpu_speed=speed,
            tensorrt_violations=qdq.violations, recommendation=advice,
        )
        log(format_report(report))
        if report.passed or opts.allow_failed:
            _write_bundle(bundle, manifest, final, ranges_path, ranges, report, output, force, opts.trt_version)
            if not report.passed:
                log(f"written anyway (--allow-failed) to {output}: the runtime refuses it unless "
                    "--allow-failed-calibration (allow_failed_calibration=True) is given")
        else:
            log(f"nothing written to {output}: the gate failed (--allow-failed writes it anyway, marked failed)")
    return report
