"""Label propagation (METHOD.md section 2, steps 1-8) as one ONNX graph, for any execution provider.

One run per frame takes the frame's feature map and the memory bank and gives the soft mask, the
frame's entry for the bank and the label map: normalisation, windowed affinity (tiled, never
dense), one joint top-k over all context frames, MAG-Filter, exp / normalise, mask sum, bilinear
upsampling, min-max, argmax, the caller's object ids and the nearest resize to the frame size.
Its ops are ones the CPU, CUDA and TensorRT providers all run; the runtime runs it on the CPU or
the CUDA provider (:mod:`diffvos.runtime.graph_engines`: why not TensorRT's), so CI (CPU)
executes exactly what a GPU runs; :mod:`diffvos.runtime.device_step` runs it with the bank in
device memory.

Geometry and settings are static (h, w, C, heads, N, r, k, T, MAG-Filter, blocks, label stride);
the number of filled slots ("slots", 1..N+1), the mask channels K+1 ("classes") and the output
frame size are dynamic, so one graph serves a whole video whatever the objects do.

Candidates, windowed (``0 < r < max(h, w) - 1``): memory cells are cut into key blocks (8x8 by
default). Per block: ``Slice`` its cells in every filled slot and the query region that can reach
it (the block grown by r), one ``Gemm`` (transB; a batched ``MatMul`` over heads), ``Add`` the
window bias (0 inside each query's (2r+1)^2 window, -1e30 outside, broadcast over slots),
``TopK`` k over all slots at once. Each query then merges the k candidates of every block it
reaches (``Gather`` with a static row table, one ``TopK``). Blocks partition the bank, so it is
read once per step and the products stay large at any block size (the notes of issue 10 compare
this with query tiles: 1.5x faster, 40x less copying). Without a window (``r = 0``) query row
bands are scored against whole frames and one ``TopK`` per band is the joint top-k.

Ties: ``TopK`` keeps exactly k candidates (lowest index first among equal values; TensorRT does
not promise an order), where the numpy reference keeps every value equal to the k-th. Measured
(issue 10 notes, section 4): ties at the k-th value are accidental float32 equalities (0-0.035 %
of queries on real features), and they changed 0 label pixels in every case measured. The choice
is exactly k.

Attention bundles (:mod:`diffvos.runtime.attention`): the input is the queries then the keys of H
heads (2*H*d channels), nothing is normalised, the bank keeps the keys (H*d channels per cell),
each head has its own top-k, MAG-Filter and normalisation at temperature sqrt(d), and the heads'
soft masks are summed with the weights given as the ``head_weights`` input.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffvos.config import PropagationConfig
from diffvos.errors import InputError
from diffvos.runtime.onnx_build import GraphBuilder
from diffvos.runtime.postprocess import LabelSpec, bilinear_matrix
from diffvos.runtime.propagation import MagFilter, parse_mag_filter

WINDOW_BIAS = -1.0e30  # added to out-of-window scores: below any cosine or attention logit, finite in float32
DEFAULT_BLOCK = 8  # key block side (issue 10 notes, block sweep: 6..12 within noise; 8x8 fewest FLOPs)
_DENSE_SCORE_BUDGET = 48 << 20  # bytes of scores per query band when there is no window
_EPS = 1e-12  # as diffvos.runtime.memory (torch F.normalize)


@dataclass(frozen=True)
class GraphSpec:
    """Static geometry and settings of one propagation graph (the graph cache's key).

    ``channels``: per head (C for a feature bundle, d for an attention bundle); ``attention``: the
    input holds queries then keys of ``heads`` heads and nothing is normalised.
    """

    h: int
    w: int
    channels: int
    heads: int = 1
    attention: bool = False
    capacity: int = 28
    radius: int = 15
    topk: int = 15
    temperature: float = 0.2
    mag: MagFilter | None = None
    block: int = DEFAULT_BLOCK
    bank_dtype: str = "float16"
    labels: LabelSpec | None = None

    @classmethod
    def for_config(cls, config: PropagationConfig, h: int, w: int, channels: int, *, heads: int = 1,
                   attention: bool = False, labels: LabelSpec | None = None) -> GraphSpec:
        """The graph for a session's propagation options; attention: ``channels`` per head, T = sqrt(d)."""
        return cls(h, w, channels, heads, attention, config.memory, config.radius, config.topk,
                   math.sqrt(channels) if attention else config.temperature, parse_mag_filter(config.mag_filter),
                   config.tile or DEFAULT_BLOCK, config.feature_dtype, labels)

    def __post_init__(self) -> None:
        if min(self.h, self.w, self.channels, self.heads, self.topk, self.block) < 1 or self.capacity < 0 \
                or self.radius < 0 or self.temperature <= 0:
            raise InputError(f"propagation graph: bad settings {self}")
        if self.h * self.w < self.topk:
            raise InputError(f"propagation graph: the {self.h}x{self.w} grid has fewer than topk={self.topk} cells")
        if (self.capacity + 1) * self.h * self.w >= 2**31:
            raise InputError("propagation graph: the memory is too large for int32 indices")

    @property
    def windowed(self) -> bool:
        return 0 < self.radius < max(self.h, self.w) - 1

    @property
    def query_channels(self) -> int:
        """Channels of the feature graph's output (the graph's ``query`` input)."""
        return 2 * self.heads * self.channels if self.attention else self.heads * self.channels

    @property
    def bank_channels(self) -> int:
        """Channels stored per memory cell (the keys of every head)."""
        return self.heads * self.channels


@dataclass(frozen=True)
class KeyBlock:
    """A block of memory cells (every slot) and the query region that can reach it (half-open)."""

    ky0: int
    ky1: int
    kx0: int
    kx1: int
    qy0: int
    qy1: int
    qx0: int
    qx1: int

    @property
    def nb(self) -> int:
        return (self.ky1 - self.ky0) * (self.kx1 - self.kx0)

    @property
    def nqr(self) -> int:
        return (self.qy1 - self.qy0) * (self.qx1 - self.qx0)


def _cuts(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / size) nearly equal ranges (no tiny remainder)."""
    m = -(-n // size)
    return list(itertools.pairwise(round(i * n / m) for i in range(m + 1)))


def key_blocks(spec: GraphSpec) -> list[KeyBlock]:
    """The key blocks, grown until each holds >= k cells (so ``TopK`` always has k entries, even with
    the first frame alone in memory)."""
    h, w, r = spec.h, spec.w, spec.radius
    by = bx = spec.block
    while True:
        blocks = [KeyBlock(y0, y1, x0, x1, max(0, y0 - r), min(h, y1 + r), max(0, x0 - r), min(w, x1 + r))
                  for y0, y1 in _cuts(h, by) for x0, x1 in _cuts(w, bx)]
        if min(b.nb for b in blocks) >= spec.topk:
            return blocks
        by, bx = min(h, by + 1), min(w, bx + 1)


def scored_pairs(spec: GraphSpec) -> int:
    """(query, memory cell) pairs scored per slot and head: the products cost 2*d*S*H times this."""
    if spec.windowed:
        return sum(b.nb * b.nqr for b in key_blocks(spec))
    return (spec.h * spec.w) ** 2


# --- the graph ---------------------------------------------------------------------------------------


def propagation_model(spec: GraphSpec) -> Any:
    """The per-frame graph (an ``onnx.ModelProto``).

    Inputs: ``query`` (1, Cq, h, w) float32, the feature graph's output as it is; ``bank_features``
    (slots, h, w, H*d) bank dtype; ``bank_masks`` (slots, h, w, classes) float32; ``head_weights``
    (H,) float32 when H > 1; with labels ``rows`` (Ho,), ``cols`` (Wo,) int64 (nearest-resize
    source indices) and ``lut`` (256,) int32 (channel -> object id).
    Outputs: ``soft`` (classes, h, w) and ``soft_hwk`` (1, h, w, classes) float32 (the same values;
    the second in the bank's layout), ``features`` (1, h, w, H*d) bank dtype (the frame's entry for
    the bank), ``labels`` (Ho, Wo) uint8 with labels, ``mag_threshold`` (H,) float32 with an adaptive
    MAG-Filter.
    """
    g = GraphBuilder()
    h, w = spec.h, spec.w
    g.input("query", np.float32, [1, spec.query_channels, h, w])
    g.input("bank_features", spec.bank_dtype, ["slots", h, w, spec.bank_channels])
    g.input("bank_masks", np.float32, ["slots", h, w, "classes"])
    if spec.heads > 1:
        g.input("head_weights", np.float32, [spec.heads])
    queries, keys = _queries_and_keys(g, spec)
    bank = "bank_features" if spec.bank_dtype == "float32" else \
        g.cast("bank_features", np.float32, base="bank32")
    if spec.windowed:
        vals, gid = _key_block_candidates(g, spec, queries, bank)
    else:
        vals, gid = _query_band_candidates(g, spec, queries, bank)
    classes = g.op("Slice", [g.op("Shape", ["bank_masks"]), g.i64([3]), g.i64([4])])  # (1,) int64: K+1
    soft = _aggregate(g, spec, vals, gid, classes)  # (hw, classes)
    g.op("Reshape", [soft, g.op("Concat", [g.i64([1, h, w]), classes], axis=0)], outputs=["soft_hwk"])
    g.op("Reshape", [g.op("Transpose", [soft], perm=[1, 0]), g.i64([-1, h, w])], outputs=["soft"])
    _features_output(g, spec, keys)
    g.output("soft", np.float32, ["classes", h, w])
    g.output("soft_hwk", np.float32, [1, h, w, "classes"])
    g.output("features", spec.bank_dtype, [1, h, w, spec.bank_channels])
    if spec.mag is not None and spec.mag.mode == "adaptive":
        g.output("mag_threshold", np.float32, [spec.heads])
    if spec.labels is not None:
        _labels(g, spec, "soft")
    return g.model("diffvos_propagation")


def remember_model(spec: GraphSpec) -> Any:
    """The first frame's graph: ``query`` (1, Cq, h, w) -> ``features`` (1, h, w, H*d), its bank entry."""
    g = GraphBuilder()
    g.input("query", np.float32, [1, spec.query_channels, spec.h, spec.w])
    _, keys = _queries_and_keys(g, spec)
    _features_output(g, spec, keys)
    g.output("features", spec.bank_dtype, [1, spec.h, spec.w, spec.bank_channels])
    return g.model("diffvos_remember")


def labels_model(spec: GraphSpec) -> Any:
    """The label stage alone: ``soft`` (classes, h, w), ``rows``, ``cols``, ``lut`` -> ``labels``
    (the propagation graph's tail, for a soft mask made elsewhere)."""
    g = GraphBuilder()
    g.input("soft", np.float32, ["classes", spec.h, spec.w])
    _labels(g, spec, "soft")
    return g.model("diffvos_labels")


def _queries_and_keys(g: GraphBuilder, spec: GraphSpec) -> tuple[str, str]:
    """``query`` -> queries and keys, each (hw, H*d) float32: the L2-normalised features (both the
    same), or an attention layer's raw projections."""
    hw, cq, hd = spec.h * spec.w, spec.query_channels, spec.bank_channels
    q = g.op("Transpose", [g.op("Reshape", ["query", g.i64([cq, hw])])], perm=[1, 0])
    if spec.attention:
        return g.op("Slice", [q, g.i64([0]), g.i64([hd]), g.i64([1])]), \
            g.op("Slice", [q, g.i64([hd]), g.i64([2 * hd]), g.i64([1])])
    norm = g.op("Max", [g.op("Sqrt", [g.op("ReduceSumSquare", [q], axes=[1], keepdims=1)]), g.f32(_EPS)])
    qn = g.op("Div", [q, norm], base="qn")
    return qn, qn


def _features_output(g: GraphBuilder, spec: GraphSpec, keys: str) -> None:
    x = g.cast(keys, np.float16) if spec.bank_dtype == "float16" else keys
    g.op("Reshape", [x, g.i64([1, spec.h, spec.w, spec.bank_channels])], outputs=["features"])


def _key_operand(g: GraphBuilder, spec: GraphSpec, keys: str) -> str:
    """Keys (n, H*d) as ``_scores`` takes them: as they are for one head (Gemm transB), (H, d, n)
    for a MatMul batched over heads."""
    if spec.heads == 1:
        return keys
    return g.op("Transpose", [g.op("Reshape", [keys, g.i64([-1, spec.heads, spec.channels])])], perm=[1, 2, 0])


def _scores(g: GraphBuilder, spec: GraphSpec, q: str, keys: str, nq: int) -> str:
    """(H, nq, n) scores of queries ``q`` (nq, H*d) against ``_key_operand`` keys."""
    if spec.heads == 1:
        return g.op("Unsqueeze", [g.op("Gemm", [q, keys], transB=1, base="scores"), g.i64([0])])
    qh = g.op("Transpose", [g.op("Reshape", [q, g.i64([nq, spec.heads, spec.channels])])], perm=[1, 0, 2])
    return g.op("MatMul", [qh, keys], base="scores")


def _window_bias(b: KeyBlock, r: int) -> np.ndarray:
    """(nqr, 1, nb) float32: 0 where the memory cell is within r (Chebyshev) of the query, else WINDOW_BIAS."""
    iny = np.abs(np.arange(b.qy0, b.qy1)[:, None] - np.arange(b.ky0, b.ky1)[None, :]) <= r
    inx = np.abs(np.arange(b.qx0, b.qx1)[:, None] - np.arange(b.kx0, b.kx1)[None, :]) <= r
    inside = iny[:, None, :, None] & inx[None, :, None, :]
    return np.where(inside, 0.0, WINDOW_BIAS).astype(np.float32).reshape(b.nqr, 1, b.nb)


def _key_block_candidates(g: GraphBuilder, spec: GraphSpec, queries: str, bank: str) -> tuple[str, str]:
    """Each key block against the queries that can reach it, then every query merges the candidates
    of the blocks it reaches. Returns values (H, hw, k) float32 sorted descending and gid (H, hw, k)
    int32 = slot * hw + cell."""
    h, w, hw, k, heads, hd = spec.h, spec.w, spec.h * spec.w, spec.topk, spec.heads, spec.bank_channels
    blocks = key_blocks(spec)
    q_hwc = g.op("Reshape", [queries, g.i64([h, w, hd])])
    rows_flat, bias_cache = g.i64([-1, hd]), {}
    vals, idx = [], []
    for b in blocks:
        keys = g.op("Reshape", [g.op("Slice", [bank, g.i64([b.ky0, b.kx0]), g.i64([b.ky1, b.kx1]), g.i64([1, 2])]),
                                rows_flat])  # (S*nb, H*d)
        qreg = g.op("Reshape", [g.op("Slice", [q_hwc, g.i64([b.qy0, b.qx0]), g.i64([b.qy1, b.qx1]), g.i64([0, 1])]),
                                rows_flat])  # (nqr, H*d)
        geometry = (b.ky0 - b.qy0, b.kx0 - b.qx0, b.ky1 - b.ky0, b.kx1 - b.kx0, b.qy1 - b.qy0, b.qx1 - b.qx0)
        if geometry not in bias_cache:
            bias_cache[geometry] = g.const(_window_bias(b, spec.radius), base="window_bias")
        s = _scores(g, spec, qreg, _key_operand(g, spec, keys), b.nqr)
        s = g.op("Reshape", [s, g.i64([heads, b.nqr, -1, b.nb])])
        s = g.op("Reshape", [g.op("Add", [s, bias_cache[geometry]]), g.i64([heads, b.nqr, -1])])
        v, i = g.op("TopK", [s, g.i64([k])], n_out=2, axis=-1, largest=1, sorted=0)
        vals.append(v)
        idx.append(i)
    # block-local TopK index -> slot * hw + cell, with per-row constants of each row's block
    sizes = [b.nqr for b in blocks]

    def per_row(values: list[int]) -> str:
        return g.i32(np.repeat(np.asarray(values, np.int32), sizes)[:, None])

    i32 = g.cast(g.op("Concat", idx, axis=1), np.int32)
    nb, kw = per_row([b.nb for b in blocks]), per_row([b.kx1 - b.kx0 for b in blocks])
    slot = g.op("Div", [i32, nb])
    local = g.op("Sub", [i32, g.op("Mul", [slot, nb])])
    ly = g.op("Div", [local, kw])
    lx = g.op("Sub", [local, g.op("Mul", [ly, kw])])
    my = g.op("Add", [ly, per_row([b.ky0 for b in blocks])])
    mx = g.op("Add", [lx, per_row([b.kx0 for b in blocks])])
    gid = g.op("Add", [g.op("Mul", [slot, g.i32(hw)]), g.op("Add", [g.op("Mul", [my, g.i32(w)]), mx])])
    # merge: each query gathers the rows of the blocks it reaches (padded with a dummy row)
    n_rows = int(sum(sizes))
    reach: list[list[int]] = [[] for _ in range(hw)]
    row = 0
    for b in blocks:
        for qy in range(b.qy0, b.qy1):
            for qx in range(b.qx0, b.qx1):
                reach[qy * w + qx].append(row)
                row += 1
    table = np.full((hw, max(len(r) for r in reach)), n_rows, np.int64)
    for qid, rows in enumerate(reach):
        table[qid, : len(rows)] = rows
    table_c = g.const(table, base="merge_rows")
    all_vals = g.op("Concat", vals + [g.f32(np.full((heads, 1, k), 2 * WINDOW_BIAS))], axis=1)
    all_gid = g.op("Concat", [gid, g.i32(np.zeros((heads, 1, k)))], axis=1)
    flat = g.i64([heads, hw, table.shape[1] * k])
    mv = g.op("Reshape", [g.op("Gather", [all_vals, table_c], axis=1), flat])  # (H, hw, reach * k)
    mg = g.op("Reshape", [g.op("Gather", [all_gid, table_c], axis=1), flat])
    v, pos = g.op("TopK", [mv, g.i64([k])], n_out=2, axis=-1, largest=1, sorted=1)
    return v, g.op("GatherElements", [mg, pos], axis=2, base="gid")


def _query_band_candidates(g: GraphBuilder, spec: GraphSpec, queries: str, bank: str) -> tuple[str, str]:
    """No window: bands of query rows against whole frames; each band's TopK over every slot is the
    joint top-k, its index already slot * hw + cell."""
    h, w, hw, k, heads = spec.h, spec.w, spec.h * spec.w, spec.topk, spec.heads
    keys = _key_operand(g, spec, g.op("Reshape", [bank, g.i64([-1, spec.bank_channels])]))  # S*hw keys
    per_band = _DENSE_SCORE_BUDGET // (4 * heads * (spec.capacity + 1) * hw)
    vals, idx = [], []
    for y0, y1 in _cuts(h, max(1, min(h, per_band // w))):
        q = g.op("Slice", [queries, g.i64([y0 * w]), g.i64([y1 * w]), g.i64([0])])
        v, i = g.op("TopK", [_scores(g, spec, q, keys, (y1 - y0) * w), g.i64([k])], n_out=2, axis=-1, largest=1,
                    sorted=1)
        vals.append(v)
        idx.append(i)
    cat = (lambda xs: g.op("Concat", xs, axis=1)) if len(vals) > 1 else (lambda xs: xs[0])
    return cat(vals), g.cast(cat(idx), np.int32, base="gid")


def _aggregate(g: GraphBuilder, spec: GraphSpec, vals: str, gid: str, classes: str) -> str:
    """MAG-Filter, exp((s - max) / T), per-query normalisation, mask sum, heads combined: (hw, classes)."""
    h, w, hw, k, heads = spec.h, spec.w, spec.h * spec.w, spec.topk, spec.heads
    keep = None
    if spec.mag is not None:
        cell = g.op("Sub", [gid, g.op("Mul", [g.op("Div", [gid, g.i32(hw)]), g.i32(hw)])])
        my = g.op("Div", [cell, g.i32(w)])
        mx = g.op("Sub", [cell, g.op("Mul", [my, g.i32(w)])])
        dy = g.op("Sub", [my, g.i32((np.arange(hw) // w)[:, None])])
        dx = g.op("Sub", [mx, g.i32((np.arange(hw) % w)[:, None])])
        d2 = g.cast(g.op("Add", [g.op("Mul", [dy, dy]), g.op("Mul", [dx, dx])]), np.float32)
        if spec.mag.mode == "fixed":
            kept = g.op("LessOrEqual", [d2, g.f32(_d2_limit(spec.mag.radius, (h - 1) ** 2 + (w - 1) ** 2))])
        else:
            mag = g.op("Sqrt", [d2])
            top1 = g.op("Reshape", [g.op("Slice", [mag, g.i64([0]), g.i64([1]), g.i64([2])]), g.i64([heads, hw])])
            thr = _percentile_threshold(g, top1, hw, spec.mag)  # (H,)
            g.op("Identity", [thr], outputs=["mag_threshold"])
            kept = g.op("LessOrEqual", [mag, g.op("Reshape", [thr, g.i64([heads, 1, 1])])])
        keep = g.cast(kept, np.float32)
        if spec.windowed:  # a candidate from outside the window (fewer than k inside) never counts
            keep = g.op("Mul", [keep, g.cast(g.op("Greater", [vals, g.f32(WINDOW_BIAS / 2)]), np.float32)])
        # a query that would lose every correspondence keeps its best one (column 0: TopK sorted)
        first = np.zeros((1, 1, k), np.float32)
        first[..., 0] = 1.0
        lost = g.op("Sub", [g.f32(1.0), g.op("ReduceMax", [keep], axes=[2], keepdims=1)])
        keep = g.op("Max", [keep, g.op("Mul", [lost, g.f32(first)])])
    best = g.op("Slice", [vals, g.i64([0]), g.i64([1]), g.i64([2])])
    wgt = g.op("Exp", [g.op("Div", [g.op("Sub", [vals, best]), g.f32(spec.temperature)])])
    if keep is not None:
        wgt = g.op("Mul", [wgt, keep])
    den = g.op("ReduceSum", [wgt, g.i64([2])], keepdims=1)
    masks = g.op("Reshape", ["bank_masks", g.op("Concat", [g.i64([-1]), classes], axis=0)])  # (S*hw, classes)
    picked = g.op("Gather", [masks, gid], axis=0)  # (H, hw, k, classes)
    num = g.op("ReduceSum", [g.op("Mul", [picked, g.op("Unsqueeze", [wgt, g.i64([3])])]), g.i64([2])], keepdims=0)
    soft = g.op("Div", [num, den])  # (H, hw, classes)
    if heads == 1:
        return g.op("Reshape", [soft, g.i64([hw, -1])])
    weighted = g.op("Mul", [soft, g.op("Reshape", ["head_weights", g.i64([heads, 1, 1])])])
    return g.op("ReduceSum", [weighted, g.i64([0])], keepdims=0)


def _d2_limit(radius: float, max_d2: int) -> int:
    """Largest integer d2 with sqrt(d2) <= radius, as the numpy kernel's float64 ``hypot`` decides."""
    limit = -1
    for d2 in range(int(max_d2) + 1):
        if math.sqrt(d2) > radius:
            break
        limit = d2
    return limit


def _percentile_threshold(g: GraphBuilder, top1: str, n: int, mag: MagFilter) -> str:
    """Per head, max(floor, multiplier * percentile(top1, p)) with numpy's linear interpolation.

    n is static, so the two order statistics needed sit at static ranks: one TopK of
    k = min(lo + 2, n - lo) from the nearer end finds both (k <= n / 2 + 1: TensorRT allows 3840)."""
    pos = (n - 1) * mag.percentile / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if lo + 2 <= n - lo:
        srt = g.op("TopK", [top1, g.i64([hi + 1])], n_out=2, axis=1, largest=0, sorted=1)[0]
        a_i, b_i = lo, hi
    else:
        srt = g.op("TopK", [top1, g.i64([n - lo])], n_out=2, axis=1, largest=1, sorted=1)[0]
        a_i, b_i = n - 1 - lo, n - 1 - hi
    a = g.op("Gather", [srt, g.i64(a_i)], axis=1)
    b = g.op("Gather", [srt, g.i64(b_i)], axis=1)
    diff = g.op("Sub", [b, a])
    if frac >= 0.5:  # numpy's _lerp evaluates from b's side there
        val = g.op("Sub", [b, g.op("Mul", [diff, g.f32(1.0 - frac)])])
    else:
        val = g.op("Add", [a, g.op("Mul", [diff, g.f32(frac)])])
    return g.op("Max", [g.op("Mul", [val, g.f32(mag.multiplier)]), g.f32(mag.floor)])


def _labels(g: GraphBuilder, spec: GraphSpec, soft: str) -> None:
    """``soft`` (classes, h, w) -> ``labels`` (Ho, Wo) uint8, as ``postprocess.soft_to_labels``:
    bilinear (the same interpolation matrices), per-channel min-max (a channel whose max is <= 0
    left as is), argmax (first channel on ties), channel -> object id (``lut``), nearest resize."""
    assert spec.labels is not None
    g.input("rows", np.int64, ["Ho"])
    g.input("cols", np.int64, ["Wo"])
    g.input("lut", np.int32, [256])
    sh, sw = spec.labels.scaled_hw
    mx = g.const(np.ascontiguousarray(bilinear_matrix(spec.w, sw).T), base="bilinear_x")  # (w, sw)
    my = g.const(bilinear_matrix(spec.h, sh), base="bilinear_y")  # (sh, h)
    up = g.op("MatMul", [my, g.op("MatMul", [soft, mx])])  # (classes, sh, sw)
    lo = g.op("ReduceMin", [up], axes=[1, 2], keepdims=1)
    hi = g.op("ReduceMax", [up], axes=[1, 2], keepdims=1)
    span = g.op("Sub", [hi, lo])
    zero = g.f32(0.0)
    normed = g.op("Div", [g.op("Sub", [up, lo]), g.op("Where", [g.op("Greater", [span, zero]), span, g.f32(1.0)])])
    up = g.op("Where", [g.op("Greater", [hi, zero]), normed, up])
    channel = g.cast(g.op("ArgMax", [up], axis=0, keepdims=0, select_last_index=0), np.int32)
    ids = g.op("Gather", ["lut", channel], axis=0)
    ids = g.op("Gather", [g.op("Gather", [ids, "rows"], axis=0), "cols"], axis=1)
    g.cast(ids, np.uint8, outputs=["labels"])
    g.output("labels", np.uint8, ["Ho", "Wo"])
