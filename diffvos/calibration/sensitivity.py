"""Which quantised nodes cost the most accuracy: the keep-one-float table.

For each INT8 compute node of the fully quantised graph, the same graph with only that node in
float (a graph edit, :func:`diffvos.calibration.qdq_graph.derive`) is run on held-out frames and
compared with FP32; the node's *gain* is how much cosine that recovers over all-INT8. This
ranks what matters in the graph as it will run (every other node INT8), unlike "only this node
quantised", which measured the stem at 0.967 mostly because of the output Q/DQ placement.
Ties go to the node with fewer FLOPs (cheaper to keep float).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from diffvos.calibration.qdq_graph import NodeCost, derive
from diffvos.calibration.report import graph_agreement


def keep_float_table(base: Any, float_model: Any, nodes: Sequence[str], costs: Sequence[NodeCost],
                     inputs: Sequence[np.ndarray], refs: Sequence[np.ndarray], work: Path, threads: int = 0,
                     log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], float]:
    """(rows most sensitive first, all-INT8 mean cosine). Each row: node, op, kind, flops,
    ``cosine_kept_float`` and ``gain`` over all-INT8."""
    import onnx

    by_name = {c.node: c for c in costs}
    path = work / "sensitivity.onnx"
    onnx.save(base, str(path))
    base_cos = graph_agreement(path, inputs, refs, threads)["mean_cosine"]
    t0 = time.perf_counter()
    rows = []
    for i, node in enumerate(nodes):
        onnx.save(derive(base, float_model, [node]), str(path))
        cos = graph_agreement(path, inputs, refs, threads)["mean_cosine"]
        c = by_name.get(node)
        rows.append({"node": node, "op": c.op if c else "", "kind": c.kind if c else "", "flops": c.flops if c else 0,
                     "cosine_kept_float": cos, "gain": cos - base_cos})
        if (i + 1) % 10 == 0 or i + 1 == len(nodes):
            log(f"  sensitivity: {i + 1}/{len(nodes)} nodes ({time.perf_counter() - t0:.0f} s)")
    rows.sort(key=lambda r: (-r["gain"], r["flops"]))
    return rows, base_cos


def ranking(rows: Sequence[dict[str, Any]], nodes: Sequence[str]) -> list[str]:
    """Every node of ``nodes``: the measured ones by the table's order, then the rest in graph order."""
    measured = [r["node"] for r in rows]
    seen = set(measured)
    return measured + [n for n in nodes if n not in seen]


def spread(nodes: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` nodes spread evenly through the graph (0: all), to bound the table's cost
    on large graphs."""
    if limit <= 0 or len(nodes) <= limit:
        return list(nodes)
    return [nodes[i] for i in np.linspace(0, len(nodes) - 1, limit).round().astype(int)]
