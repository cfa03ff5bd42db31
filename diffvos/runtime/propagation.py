"""Label propagation through a local, top-k affinity (METHOD.md section 2, steps 1-7).

The affinity is never built densely. The query grid is cut into square tiles; each tile's
queries are multiplied (float32 BLAS) only against the key region of a context frame that their
windows can reach (the tile grown by r on every side, clipped to the grid). Cells outside a
query's own (2r+1)x(2r+1) window get -inf. Context frames are the outer loop, so a float16 frame
is widened once per step; each frame yields its own top-k per query (ties kept) and the joint
top-k over all frames is taken on the union of those, which always contains it. Selection works
on cosines (exp is monotonic) and exp is applied, max-subtracted, only to kept values; the kept
correspondences of the whole frame then go through one vectorised normalise-and-sum. Scratch is
preallocated and sized by the tile; memory is the bank (linear in h*w*N) plus bounded scratch
and O(h*w*N*k) per-step candidate lists. ``radius=0`` (no window) runs the same kernel with
tiles of whole query rows against whole frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffvos.config import PropagationConfig
from diffvos.errors import InputError
from diffvos.runtime.memory import MemoryBank, to_hwc_into
from diffvos.runtime.postprocess import HostLabels

_DENSE_SCORE_BUDGET = 32 << 20  # bytes of scores per tile when there is no window


@dataclass(frozen=True)
class MagFilter:
    """MAG-Filter: drop kept correspondences whose displacement is too long (METHOD.md, MAG-Filter).

    A correspondence is a (query cell, memory cell) pair kept by the top-k; its magnitude is the
    Euclidean grid offset between the two cells, in feature cells. Those longer than the
    threshold are removed before normalisation; a query that would lose all of them keeps its
    best (highest affinity) one.

    ``mode="fixed"``: threshold = ``radius`` cells.
    ``mode="adaptive"``: per frame, threshold = max(``floor``, ``multiplier`` x the
    ``percentile``-th percentile of the top-1 displacement magnitudes over the frame's queries),
    i.e. correspondences much longer than the frame's typical best match are treated as outliers.
    """

    mode: str = "adaptive"
    radius: float = 8.0
    percentile: float = 90.0
    multiplier: float = 1.5
    floor: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "adaptive"):
            raise InputError(f"MagFilter.mode must be 'fixed' or 'adaptive', not {self.mode!r}")
        if self.radius < 0 or self.floor < 0 or self.multiplier <= 0 or not 0 <= self.percentile <= 100:
            raise InputError(f"MagFilter: bad parameters {self}")

    def threshold(self, top1_magnitudes: np.ndarray) -> float:
        """The frame's threshold in cells, given each query's top-1 displacement magnitude."""
        if self.mode == "fixed":
            return float(self.radius)
        if top1_magnitudes.size == 0:
            return float(self.floor)
        typical = float(np.percentile(top1_magnitudes, self.percentile))
        return max(float(self.floor), self.multiplier * typical)


def parse_mag_filter(spec: str) -> MagFilter | None:
    """The MAG-Filter named by ``PropagationConfig.mag_filter``: 'off', 'adaptive' or a fixed radius."""
    if spec == "off":
        return None
    if spec == "adaptive":
        return MagFilter(mode="adaptive")
    return MagFilter(mode="fixed", radius=float(spec))


DEFAULT_TILE = 12  # measured best (4-16) by benchmarks/bench_propagation.py --tiles, 60x104, C=512, 29 frames


@dataclass
class _Tile:
    qy: slice
    qx: slice
    ky: slice
    kx: slice
    query_ids: np.ndarray  # raster indices of the tile's queries
    bias: np.ndarray | None  # (nq, R) 0 inside each query's window, -inf outside; None = all inside


class Propagator(HostLabels):
    """Owns the memory bank and scratch; ``start`` with the first frame, then ``step`` per frame.

    ``normalise=False`` takes the features as they are (no L2 normalisation): with ``keys`` given
    to :meth:`predict`/:meth:`step` the score is then the raw dot product of a query projection
    with the remembered key projections, i.e. one attention head (:mod:`diffvos.runtime.attention`).
    """

    def __init__(
        self, channels: int, h: int, w: int, num_classes: int, config: PropagationConfig | None = None,
        *, normalise: bool = True,
    ) -> None:
        self.channels, self.h, self.w, self.num_classes = channels, h, w, num_classes
        self.config = cfg = config or PropagationConfig()
        self.normalise = normalise
        self.mag_filter = parse_mag_filter(cfg.mag_filter)
        self.bank = MemoryBank(
            self.h, self.w, self.channels, self.num_classes, cfg.memory, np.dtype(cfg.feature_dtype).type, normalise
        )
        self.query = np.empty((self.h, self.w, self.channels), np.float32)
        self.keys: np.ndarray | None = None  # (h, w, C) keys remembered instead of the query, when given
        self._remember_keys = False
        self.last_threshold: float | None = None  # MAG-Filter threshold of the last step
        self._build_tiles()

    # -- geometry ----------------------------------------------------------------------------
    def _build_tiles(self) -> None:
        h, w, r = self.h, self.w, self.config.radius
        self.windowed = 0 < r < max(h, w) - 1
        if (self.config.memory + 1) * h * w >= 2**31:
            raise InputError(f"propagation: memory of {(self.config.memory + 1)} frames of {h}x{w} cells is too large")
        if self.windowed:
            ty = tx = self.config.tile or DEFAULT_TILE
        else:  # whole rows of queries against whole frames, scores bounded by the budget
            tx = w
            ty = max(1, min(h, _DENSE_SCORE_BUDGET // (4 * w * h * w)))
            r = max(h, w)
        bias_cache: dict[tuple, np.ndarray] = {}
        self.tiles: list[_Tile] = []
        max_scores = max_keys = 0
        for y0 in range(0, h, ty):
            for x0 in range(0, w, tx):
                y1, x1 = min(h, y0 + ty), min(w, x0 + tx)
                ky0, ky1, kx0, kx1 = max(0, y0 - r), min(h, y1 + r), max(0, x0 - r), min(w, x1 + r)
                bias = None
                if self.windowed:
                    key = (y0 - ky0, x0 - kx0, y1 - y0, x1 - x0, ky1 - ky0, kx1 - kx0)
                    if key not in bias_cache:
                        bias_cache[key] = _window_bias(np.arange(y0, y1) - ky0, np.arange(x0, x1) - kx0,
                                                       ky1 - ky0, kx1 - kx0, r)
                    bias = bias_cache[key]
                ids = (np.arange(y0, y1)[:, None] * w + np.arange(x0, x1)[None, :]).ravel()
                self.tiles.append(_Tile(slice(y0, y1), slice(x0, x1), slice(ky0, ky1), slice(kx0, kx1), ids, bias))
                nk = (ky1 - ky0) * (kx1 - kx0)
                max_scores = max(max_scores, ids.size * nk)
                max_keys = max(max_keys, nk)
        self._scores = np.empty(max_scores, np.float32)
        self._part = np.empty(max_scores, np.float32)
        self._keys = np.empty(max_keys * self.channels, np.float32)
        self._order = np.concatenate([t.query_ids for t in self.tiles])  # tile-major query order
        self._offsets = np.cumsum([0] + [t.query_ids.size for t in self.tiles])[:-1]
        self._qpacked = np.empty((h * w, self.channels), np.float32)
        self._frame32 = (
            np.empty((h, w, self.channels), np.float32) if self.bank.features.dtype != np.float32 else None
        )
        # raster position of every cell, for displacements
        self._cell_y = np.repeat(np.arange(h), w)
        self._cell_x = np.tile(np.arange(w), h)

    @property
    def scratch_nbytes(self) -> int:
        extra = self._frame32.nbytes if self._frame32 is not None else 0
        return self._scores.nbytes + self._part.nbytes + self._keys.nbytes + self._qpacked.nbytes + self.query.nbytes + extra

    # -- public API ----------------------------------------------------------------------------
    def start(self, features: np.ndarray, onehot: np.ndarray) -> None:
        """First frame: features (C, h, w) and its one-hot mask (K+1, h, w); clears the memory."""
        features = np.asarray(features)  # a feature map left on the device comes to the host here
        _check_finite(features, "first frame features")
        self.bank.set_first(features, onehot.astype(np.float32, copy=False))

    def step(self, features: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Soft mask (K+1, h, w) float32 of a new frame (C, h, w); the frame then enters the FIFO."""
        soft = self.predict(features, keys)
        self.remember(soft)
        return soft

    def predict(self, features: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Soft mask (K+1, h, w) of a new frame (C, h, w) from the memory, without remembering it:
        :meth:`remember` stores it with the mask the caller settles on (objects added mid-video).
        ``keys`` (C, h, w): what the frame is remembered by, when it differs from its queries."""
        if len(self.bank) == 0:
            raise InputError("Propagator.predict() before start()")
        features = np.asarray(features)  # a feature map left on the device comes to the host here
        for name, a in (("features", features), ("keys", keys)):
            if a is not None and a.shape != (self.channels, self.h, self.w):
                raise InputError(f"{name} are {a.shape}, expected {(self.channels, self.h, self.w)}")
        _check_finite(features, "frame features")
        to_hwc_into(features, self.query, self.normalise)
        if keys is not None:
            _check_finite(keys, "frame keys")
            if self.keys is None:
                self.keys = np.empty_like(self.query)
            to_hwc_into(keys, self.keys, self.normalise)
        self._remember_keys = keys is not None
        qids, vals, cells = self._candidates(self.bank.context_slots())
        soft_hwk = self._aggregate(qids, vals, cells)
        return np.ascontiguousarray(np.moveaxis(soft_hwk, -1, 0)).reshape(-1, self.h, self.w)

    def remember(self, mask: np.ndarray) -> None:
        """Push the last predicted frame's features (or keys) into the FIFO with ``mask`` (K+1, h, w)."""
        stored = self.keys if self._remember_keys else self.query
        self.bank.push(stored, mask, normalised_hwc=True)

    def add_objects(self, n: int = 1) -> None:
        """New object channels (zero in all stored frames, see ``MemoryBank.add_objects``)."""
        self.bank.add_objects(n)
        self.num_classes = self.bank.num_classes

    def remove_object(self, k: int) -> None:
        """Drop object ``k``; its mass joins the background (see ``MemoryBank.remove_object``)."""
        self.bank.remove_object(k)
        self.num_classes = self.bank.num_classes

    # -- kernel ----------------------------------------------------------------------------------
    def _candidates(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kept (query, cosine, memory cell) triples, grouped by query.

        Context frames are the outer loop so that a float16 frame is widened to float32 once
        per step (not once per tile). Each frame contributes its own top-k per query (ties kept);
        the joint top-k over all frames is always inside the union of those, so it is taken on
        that union afterwards.
        """
        feats, c, hw, w = self.bank.features, self.channels, self.h * self.w, self.w
        k = self.config.topk
        np.take(self.query.reshape(hw, c), self._order, axis=0, out=self._qpacked)
        pos_l, val_l, cell_l = [], [], []
        for slot in slots:
            frame = feats[slot]
            if frame.dtype != np.float32:
                np.copyto(self._frame32, frame)
                frame = self._frame32
            for t, off in zip(self.tiles, self._offsets):
                nq = t.query_ids.size
                nky, nkx = t.ky.stop - t.ky.start, t.kx.stop - t.kx.start
                nk = nky * nkx
                if nkx == w:
                    keys = frame[t.ky].reshape(nk, c)  # whole rows: a view
                else:
                    keys = self._keys[: nk * c].reshape(nk, c)
                    keys.reshape(nky, nkx, c)[...] = frame[t.ky, t.kx]
                scores = self._scores[: nq * nk].reshape(nq, nk)
                np.matmul(self._qpacked[off : off + nq], keys.T, out=scores)
                if t.bias is not None:
                    scores += t.bias
                kk = min(k, nk)
                part = self._part[: nq * nk].reshape(nq, nk)
                np.copyto(part, scores)
                part.partition(nk - kk, axis=1)
                kth = part[:, nk - kk].copy()
                np.maximum(kth, np.finfo(np.float32).min, out=kth)  # never keep -inf (outside window)
                rows, cols = np.nonzero(scores >= kth[:, None])
                ry, rx = np.divmod(cols, nkx)
                pos_l.append((rows + off).astype(np.int32))
                val_l.append(scores[rows, cols])
                cell_l.append((slot * hw + (ry + t.ky.start) * w + (rx + t.kx.start)).astype(np.int32))
        pos, vals, cells = np.concatenate(pos_l), np.concatenate(val_l), np.concatenate(cell_l)
        del pos_l, val_l, cell_l
        if len(slots) > 1:  # joint top-k (ties kept) over the union of per-frame candidates
            order = np.argsort(pos, kind="stable")
            pos, vals, cells = pos[order], vals[order], cells[order]
            counts = np.bincount(pos, minlength=hw)
            starts = np.cumsum(counts) - counts
            within = np.arange(pos.size) - starts[pos]
            width = int(counts.max())
            if width > k:
                padded = np.full((hw, width), -np.inf, np.float32)
                padded[pos, within] = vals
                kth = np.partition(padded, width - k, axis=1)[:, width - k]
                np.maximum(kth, np.finfo(np.float32).min, out=kth)
                keep = vals >= kth[pos]
                pos, vals, cells = pos[keep], vals[keep], cells[keep]
        return self._order[pos], vals, cells

    def _aggregate(self, qids: np.ndarray, vals: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Exp, optional MAG-Filter, per-query normalisation and mask sum; (hw, K+1) float32."""
        hw = self.h * self.w
        starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
        counts = np.diff(np.r_[starts, qids.size])
        keep = None
        mag_cfg = self.mag_filter
        if mag_cfg is not None:
            mem = cells % hw
            mag = np.hypot(self._cell_y[mem] - self._cell_y[qids], self._cell_x[mem] - self._cell_x[qids])
            best = _segment_argmax(vals, starts, counts)
            self.last_threshold = mag_cfg.threshold(mag[best])
            keep = mag <= self.last_threshold
            lost = np.add.reduceat(keep.astype(np.int32), starts) == 0
            keep[best[lost]] = True
            vals = np.where(keep, vals, -np.inf).astype(np.float32)
        vmax = np.maximum.reduceat(vals, starts)
        wgt = np.exp((vals - np.repeat(vmax, counts)) / np.float32(self.config.temperature))
        masks = self.bank.masks.reshape(-1, self.bank.num_classes)
        num = np.add.reduceat(wgt[:, None] * masks[cells], starts, axis=0)
        den = np.add.reduceat(wgt, starts)
        out = np.empty((hw, self.bank.num_classes), np.float32)
        out[qids[starts]] = num / den[:, None]
        return out


def _window_bias(qy: np.ndarray, qx: np.ndarray, nky: int, nkx: int, r: int) -> np.ndarray:
    """(nq, nky*nkx): 0 where the key cell is within r (Chebyshev) of the query cell, else -inf."""
    iny = np.abs(qy[:, None] - np.arange(nky)[None, :]) <= r  # (ty, nky)
    inx = np.abs(qx[:, None] - np.arange(nkx)[None, :]) <= r  # (tx, nkx)
    inside = iny[:, None, :, None] & inx[None, :, None, :]  # (ty, tx, nky, nkx)
    return np.where(inside, 0.0, -np.inf).astype(np.float32).reshape(qy.size * qx.size, nky * nkx)


def _segment_argmax(vals: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Index of the first maximum of each segment."""
    is_max = vals == np.repeat(np.maximum.reduceat(vals, starts), counts)
    seg = np.repeat(np.arange(starts.size), counts)
    idx = np.flatnonzero(is_max)
    first = np.r_[True, seg[idx][1:] != seg[idx][:-1]]
    return idx[first]


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        raise InputError(f"propagation: {what} contain NaN or infinity")
