"""The calibration report: feature agreement, and the printed form of the manifest's ``calibration``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffvos.bundle import Calibration
from diffvos.bundle.compare import compare
from diffvos.runtime.engine import Engine
from diffvos.runtime.ort_engine import OrtLoader

SHOWN = 8  # sensitivity rows printed (all of them are in the manifest)


def feature_agreement(references: list[np.ndarray], candidates: list[np.ndarray]) -> dict[str, Any]:
    """Worst and mean cosine, worst relative error (max abs error / max |reference|) over frames."""
    rows = [compare(r, c) for r, c in zip(references, candidates)]
    if not rows:
        return {"frames": 0}
    return {
        "frames": len(rows),
        "min_cosine": min(r.cosine for r in rows),
        "mean_cosine": float(np.mean([r.cosine for r in rows])),
        "max_rel_error": max(r.max_rel_error for r in rows),
        "max_abs_error": max(r.max_abs_error for r in rows),
    }


def graph_agreement(path: Path, inputs: Sequence[np.ndarray], refs: Sequence[np.ndarray],
                    threads: int = 0) -> dict[str, Any]:
    """:func:`feature_agreement` of the graph at ``path`` (run on the CPU provider, then closed) with
    the FP32 references."""
    engine: Engine = OrtLoader(Path(path), backend="cpu", threads=threads)()
    try:
        name = engine.inputs[0].name
        outs = [next(iter(engine.infer({name: x}).values())) for x in inputs]
    finally:
        engine.close()
    return feature_agreement(list(refs), outs)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _jf(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_report(r: Calibration) -> str:
    """What ``diffvos calibrate`` prints: the same facts as the manifest's ``calibration``."""
    c = r.chosen
    lines = [f"calibration: {r.method} over {r.calibration_frames} frames; target {c.get('target')} "
             f"(Q/DQ on {c.get('placement')}), {c.get('quantiser', 'ONNX Runtime')}"]
    lines.append(f"  {'candidate':<14}{'op types':<16}{'INT8 FLOPs':>11}{'cosine mean':>13}  graph")
    for row in r.candidates:
        ops = ",".join(row["op_types"]) if isinstance(row.get("op_types"), list) else str(row.get("op_types"))
        if row.get("identical_to"):
            lines.append(f"  {row['name']:<14}{ops:<16}{'':>11}{'':>13}  identical to '{row['identical_to']}' (dropped)")
        else:
            lines.append(f"  {row['name']:<14}{ops:<16}{_pct(row.get('int8_flop_fraction')):>11}"
                         f"{row.get('mean_cosine', float('nan')):>13.4f}  {row['graph_sha256'][:12]}")
    if r.sensitivity:
        lines.append("sensitivity (cosine recovered when only this node stays float), most sensitive first:")
        for row in r.sensitivity[:SHOWN]:
            lines.append(f"  {row['node'][-52:]:<52} {row['kind']:<10}{row['gain']:+.5f}")
        if len(r.sensitivity) > SHOWN:
            lines.append(f"  ... {len(r.sensitivity) - SHOWN} more in the manifest")
    if r.search is not None:
        trace = ", ".join(f"{s.k}:{'pass' if s.passed else 'fail'}" for s in r.search.steps)
        k = r.search.kept
        lines.append(f"search from '{r.search.base}' (keep k float): {trace} -> "
                     + (f"k = {k} after {len(r.search.steps)} evaluations" if k is not None else "no k passed"))
    kept = ", ".join(r.kept_float[:SHOWN]) + (f", ... {len(r.kept_float) - SHOWN} more in the manifest"
                                               if len(r.kept_float) > SHOWN else "")
    lines.append(f"kept float ({len(r.kept_float)}): {kept or 'none'}")
    lines.append(f"INT8 share of the compute FLOPs: {_pct(r.int8_flop_fraction)}")
    acc = r.accuracy
    if acc.get("frames"):
        lines.append(f"held-out features ({acc['frames']} frames; reported, not gated): cosine min "
                     f"{acc['min_cosine']:.4f}, mean {acc['mean_cosine']:.4f}")
    lim = r.limits
    lines.append(f"mask gate (Session.step vs FP32): IoU >= {lim.get('min_iou')} on held-out videos, >= min("
                 f"{lim.get('min_iou')}, noise floor) on calibration videos; J&F at most {lim.get('max_jf_drop')} "
                 "points below FP32 where ground truth is given")
    lines.append(f"  {'video':<20}{'role':<12}{'frames':>7}{'IoU mean':>10}{'min':>8}{'limit':>8}{'floor':>8}"
                 f"{'J&F fp32':>10}{'J&F int8':>10}{'delta':>8}  verdict")
    for v in r.videos:
        floor = "-" if v.noise_floor_iou is None else f"{v.noise_floor_iou:.4f}"
        delta = "-" if v.jf_delta is None else f"{v.jf_delta:+.2f}"
        lines.append(f"  {Path(v.video).name[:19]:<20}{v.role:<12}{v.frames:>7}{v.mean_iou:>10.4f}{v.min_iou:>8.4f}"
                     f"{v.iou_limit:>8.4f}{floor:>8}{_jf(v.jf_fp32):>10}{_jf(v.jf):>10}{delta:>8}  "
                     f"{'pass' if v.passed else 'FAIL'}")
    if r.cpu_speed is not None:
        s = r.cpu_speed
        lines.append(f"ONNX Runtime CPU: FP32 {s.fp32_ms:.1f} ms, INT8 {s.int8_ms:.1f} ms ({s.speedup:.2f}x, median of "
                     f"{s.runs}); {s.note}")
    lines.append("TensorRT Q/DQ rules: " + ("followed" if not r.tensorrt_violations else
                                             f"{len(r.tensorrt_violations)} violation(s): "
                                             + "; ".join(r.tensorrt_violations[:3])))
    if r.passed:
        lines.append("PASS")
    else:
        lines.append("FAIL: " + "; ".join(r.failed_limits()))
    return "\n".join(lines)
