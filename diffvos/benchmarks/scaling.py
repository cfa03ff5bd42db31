"""Scaling of one propagation step (the project's windowed kernel): time and peak memory as the
feature grid h*w grows and as the memory N grows. Writes a CSV and, with matplotlib, a PNG beside it.

    python -m diffvos.benchmarks.scaling [--sizes 30x52 60x104 120x208] [--memories 1 2 4 8 16 28]
    diffvos bench scaling ...            (same options)

Memory is filled directly with random unit features and soft masks (3 channels), as in
diffvos/benchmarks/propagation.py, whose helpers are reused. Per point: median step time over
``--runs`` steps; the peak of numpy allocations during a step (tracemalloc: numpy reports its
buffers to it), and the preallocated memory bank and scratch. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

FIELDS = ("sweep", "h", "w", "hw", "memory_N", "context_frames", "channels", "median_ms", "step_peak_traced_mib",
          "bank_mib", "scratch_mib")


def _propagation_helpers():
    from diffvos.benchmarks import propagation

    return propagation


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bench scaling: size must be HxW, e.g. 60x104, not {text!r}") from None
    return h, w


def measure(h: int, w: int, memory: int, channels: int, runs: int, feature_dtype: str = "float16") -> dict:
    """One point: a propagator with N+1 context frames, ``runs`` timed steps."""
    from diffvos.config import PropagationConfig

    bp = _propagation_helpers()
    cfg = PropagationConfig(memory=memory, feature_dtype=feature_dtype)
    p, t, peak = bp.time_windowed(channels, h, w, memory + 1, cfg, runs)
    return {"h": h, "w": w, "hw": h * w, "memory_N": memory, "context_frames": memory + 1, "channels": channels,
            "median_ms": round(t * 1e3, 2), "step_peak_traced_mib": round(peak / 2**20, 3),
            "bank_mib": round(p.bank.nbytes / 2**20, 3), "scratch_mib": round(p.scratch_nbytes / 2**20, 3)}


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot(rows: list[dict], path: Path) -> bool:
    """Two panels (grid sweep, memory sweep): ms and peak MiB. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, sweep, key, label in ((axes[0], "grid", "hw", "feature cells h*w"),
                                  (axes[1], "memory", "context_frames", "context frames N+1")):
        pts = sorted((r for r in rows if r["sweep"] == sweep), key=lambda r: r[key])
        if not pts:
            ax.set_visible(False)
            continue
        x = [r[key] for r in pts]
        ax.plot(x, [r["median_ms"] for r in pts], "o-", color="tab:blue", label="step time (ms)")
        ax.set_xlabel(label)
        ax.set_ylabel("ms per step", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(x, [r["bank_mib"] + r["scratch_mib"] + r["step_peak_traced_mib"] for r in pts], "s--",
                 color="tab:red", label="memory (MiB)")
        ax2.set_ylabel("bank + scratch + step peak, MiB", color="tab:red")
        ax.set_title(f"{sweep} sweep")
    fig.tight_layout()
    from diffvos.io.atomic import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return True


def format_table(rows: list[dict]) -> str:
    lines = ["| sweep | grid h x w | context frames | ms per step | step peak (traced) MiB | bank MiB | scratch MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sweep']} | {r['h']}x{r['w']} | {r['context_frames']} | {r['median_ms']:.0f} | "
                     f"{r['step_peak_traced_mib']:.1f} | {r['bank_mib']:.1f} | {r['scratch_mib']:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from diffvos.io.atomic import write_text_atomic

    sizes = [parse_size(s) for s in args.sizes]
    mh, mw = parse_size(args.memory_size)
    full_n = max(args.memories) if args.memories else 28
    rows = []
    print(f"C={args.channels}, r=15, k=15, 3 mask channels, memory features {args.feature_dtype}, "
          f"median of {args.runs} steps")
    for h, w in sizes:
        rows.append({"sweep": "grid", **measure(h, w, full_n, args.channels, args.runs, args.feature_dtype)})
        print(f"  grid {h}x{w}, N={full_n}: {rows[-1]['median_ms']:.0f} ms", flush=True)
    for n in args.memories:
        rows.append({"sweep": "memory", **measure(mh, mw, n, args.channels, args.runs, args.feature_dtype)})
        print(f"  grid {mh}x{mw}, N={n}: {rows[-1]['median_ms']:.0f} ms", flush=True)
    out = Path(args.output)
    write_text_atomic(out, to_csv(rows))
    print("\n" + format_table(rows))
    png = out.with_suffix(".png")
    if plot(rows, png):
        print(f"\nwrote {out} and {png}")
    else:
        print(f"\nwrote {out} (no plot: matplotlib is not installed; pip install matplotlib)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from diffvos.evaluation.benchmarks import add_scaling_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scaling_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
