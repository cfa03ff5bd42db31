"""Automatic mixed precision: keep the k most sensitive nodes in float, k as small as the gate allows.

Candidate k is the fully quantised graph with the first k nodes of the sensitivity ranking kept
float (a graph edit, then pruned). The search tries k = 0, then 1, 2, 4, 8, ... (capped at the
number of nodes) until one passes, then bisects between the last failure and that pass: about
2 log2(k) evaluations. It assumes the gate is monotone in k, which the ranking makes likely but
a noisy gate can break (the study saw it on the tiny ADM fixture); the held-out videos' gate
after the search is the guard. Two values of k that give the same graph (by hash) are evaluated once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from diffvos.bundle import PrecisionSearch, SearchStep
from diffvos.calibration.qdq_graph import (
    NodeCost,
    derive,
    graph_sha256,
    int8_flop_fraction,
    quantised_nodes,
)


def keep_count_search(n: int, passes: Callable[[int], bool]) -> tuple[int | None, list[int]]:
    """(smallest k in 0..n with ``passes(k)``, the k tried in order), for a monotone ``passes``;
    None when even k = n fails."""
    tried: list[int] = []

    def test(k: int) -> bool:
        tried.append(k)
        return passes(k)

    if test(0):
        return 0, tried
    if n == 0:
        return None, tried
    lo, hi = 0, 1
    while not test(hi):
        if hi == n:
            return None, tried
        lo, hi = hi, min(2 * hi, n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if test(mid):
            hi = mid
        else:
            lo = mid
    return hi, tried


class MixedPrecisionSearch:
    """The search over one quantised graph. ``gate(path)`` evaluates a graph file and returns a
    dict with ``passed``, ``mean_iou``, ``iou_limit`` and ``jf_delta``."""

    def __init__(self, base: Any, float_model: Any, order: Sequence[str], costs: Sequence[NodeCost],
                 gate: Callable[[Path], dict[str, Any]], work: Path, base_name: str = "",
                 log: Callable[[str], None] = print) -> None:
        self.base, self.float_model, self.order = base, float_model, list(order)
        self.costs, self.gate, self.work, self.log = costs, gate, Path(work), log
        self.base_name = base_name
        self.steps: list[SearchStep] = []
        self._by_sha: dict[str, SearchStep] = {}
        self._by_k: dict[int, SearchStep] = {}

    def graph(self, k: int) -> Any:
        """The pruned graph with the k most sensitive nodes kept float."""
        return derive(self.base, self.float_model, self.order[:k])

    def path(self, k: int) -> Path:
        """The file of an evaluated k's graph (an earlier k's when the graphs are identical)."""
        step = self._by_k.get(k)
        return self.work / f"search-keep{step.same_graph_as if step and step.same_graph_as is not None else k}.onnx"

    def evaluate(self, k: int) -> SearchStep:
        import onnx

        if k in self._by_k:
            return self._by_k[k]
        model = self.graph(k)
        sha = graph_sha256(model)
        earlier = self._by_sha.get(sha)
        if earlier is not None:  # the same graph as an evaluated k: same verdict, no re-run
            step = SearchStep(k=k, graph_sha256=sha, int8_flop_fraction=earlier.int8_flop_fraction,
                              mean_iou=earlier.mean_iou, iou_limit=earlier.iou_limit, passed=earlier.passed,
                              jf_delta=earlier.jf_delta, seconds=0.0, same_graph_as=earlier.k)
            self.log(f"  keep {k} float: the same graph as keep {earlier.k}")
        else:
            onnx.save(model, str(self.path(k)))
            t0 = time.perf_counter()
            result = self.gate(self.path(k))
            step = SearchStep(k=k, graph_sha256=sha, int8_flop_fraction=int8_flop_fraction(self.costs, quantised_nodes(model)),
                              mean_iou=result["mean_iou"], iou_limit=result["iou_limit"], passed=result["passed"],
                              jf_delta=result.get("jf_delta"), seconds=round(time.perf_counter() - t0, 1))
            self._by_sha[sha] = step
            jf = f", J&F {step.jf_delta:+.2f} pts" if step.jf_delta is not None else ""
            frac = f", INT8 FLOPs {step.int8_flop_fraction:.1%}" if step.int8_flop_fraction is not None else ""
            self.log(f"  keep {k} float: proxy IoU {step.mean_iou:.4f} (limit {step.iou_limit:.4f}){jf}{frac} -> "
                     f"{'pass' if step.passed else 'fail'} ({step.seconds:.0f} s)")
        self._by_k[k] = step
        self.steps.append(step)
        return step

    def run(self) -> PrecisionSearch:
        t0 = time.perf_counter()
        k, _ = keep_count_search(len(self.order), lambda k: self.evaluate(k).passed)
        return PrecisionSearch(base=self.base_name, order=list(self.order), steps=list(self.steps), kept=k,
                               seconds=round(time.perf_counter() - t0, 1))
