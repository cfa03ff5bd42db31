"""Accuracy report of a reduced-precision bundle against its FP32 source: features and masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffvos.bundle.compare import compare


def feature_agreement(references: list[np.ndarray], candidates: list[np.ndarray]) -> dict[str, float]:
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


def format_report(report: dict[str, Any]) -> str:
    """The printed form of the report written into the bundle's manifest."""
    lines = [f"calibration: {report.get('method')} over {report.get('calibration_frames')} frames; "
             f"chosen configuration '{report['chosen']['name']}' (target {report['chosen']['target']})"]
    rows = report.get("candidates", [])
    if rows:
        lines.append(f"  {'candidate':<22}{'cosine':>10}{'rel.err':>10}{'ms':>10}{'speedup':>9}")
        for r in rows:
            ms = f"{r['ms']:.1f}" if r.get("ms") is not None else "-"
            sp = f"{r['speedup_vs_fp32']:.2f}x" if r.get("speedup_vs_fp32") else "-"
            lines.append(f"  {r['name']:<22}{r['cosine']:>10.5f}{r['max_rel_error']:>10.4f}{ms:>10}{sp:>9}")
    acc = report.get("accuracy", {})
    if acc.get("frames"):
        lines.append(f"held-out features ({acc['frames']} frames): min cosine {acc['min_cosine']:.5f}, "
                     f"mean {acc['mean_cosine']:.5f}, max relative error {acc['max_rel_error']:.4f}")
    masks = report.get("masks")
    if masks:
        if "mean_iou" in masks:
            lines.append(f"held-out video masks vs FP32 ({masks['frames']} frames): mean IoU {masks['mean_iou']:.4f}, "
                         f"min {masks['min_iou']:.4f}")
        else:
            lines.append(f"mask agreement: {masks.get('skipped', 'not measured')}")
    sens = report.get("sensitivity", [])
    if sens:
        lines.append("per-layer sensitivity (only this node quantised; cosine vs FP32, worst first):")
        for r in sens[: report.get("sensitivity_shown", 15)]:
            lines.append(f"  {r['node']:<48}{r['op']:>8}{r['cosine']:>12.6f}")
        if len(sens) > report.get("sensitivity_shown", 15):
            lines.append(f"  ... {len(sens) - report.get('sensitivity_shown', 15)} more in the manifest")
    verdict = "PASS" if report.get("passed") else "FAIL"
    lines.append(f"{verdict}: limits min cosine {report['limits']['min_cosine']}"
                 + (f", min mask IoU {report['limits']['min_iou']}" if masks and "mean_iou" in masks else ""))
    return "\n".join(lines)
