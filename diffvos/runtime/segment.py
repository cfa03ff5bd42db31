"""Zero-shot video semantic segmentation with no mask given (README, "Video semantic segmentation").

After Wang et al., "Zero-Shot Video Semantic Segmentation based on Pre-Trained Diffusion Models",
stages 1 and 2, streamed frame by frame:

1. The first frame's feature vectors (L2-normalised, one per grid cell) are clustered by
   spherical K-means (k-means++ seeding, fixed seed); K is given, or chosen by the silhouette
   rule (:func:`choose_k`). Its clusters are the segments, ids 1..K for the whole video.
2. A scene-context model (:class:`SceneContext`), a KNN classifier over (feature, segment)
   pairs, predicts each later frame: per cell the ``knn`` most similar stored vectors vote with
   weight exp(cos/T). It is updated autoregressively with its own (refined) predictions under a
   fixed budget: ``anchor_vectors`` class-balanced pairs of the first frame stay, and each of the
   last ``context_frames`` frames keeps ``frame_vectors`` class-balanced pairs (FIFO).
3. Correspondence-based refinement: the frame's soft segment map is also propagated from the
   refined maps of the previous frames by the tracker's windowed top-k affinity
   (:class:`~diffvos.runtime.propagation.Propagator`: first frame + FIFO memory, window, top-k,
   MAG-Filter), which aggregates the predictions at temporally corresponding positions; the
   refined map is ``(1 - w) * knn + w * propagated`` (w = ``refine_weight``), and it is what the
   memory and the context model remember.

Labels: bilinear upsampling of the refined map to the model input size, argmax, nearest resize
to the frame (no per-channel min-max normalisation: a segment absent from a frame must stay
absent). The paper's third stage (masked modulation through diffusion decoding) is not done:
see the README.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from diffvos.config import SegmentConfig, SessionConfig
from diffvos.errors import InputError, NotStartedError
from diffvos.runtime.features import Features
from diffvos.runtime.postprocess import resize_nearest, upsample_bilinear
from diffvos.runtime.propagation import Propagator

MAX_SEGMENTS = 254  # ids 1..K are uint8 palette indices


def normalised_rows(features: np.ndarray) -> np.ndarray:
    """[C, h, w] -> [h*w, C] float32 unit vectors."""
    x = features.reshape(features.shape[0], -1).T.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Spherical K-means of unit rows ``x`` [n, C]: k-means++ seeding on 1 - cos, Lloyd updates
    with normalised means. Returns (labels [n] in 0..k-1, centres [k, C]). An emptied cluster is
    re-seeded at the row farthest from its centre."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"cannot make {k} segments from {n} feature cells")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    dist = 1.0 - x @ centres[0]
    for i in range(1, k):
        p = np.maximum(dist, 0) ** 2
        centres[i] = x[rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)]
        dist = np.minimum(dist, 1.0 - x @ centres[i])
    labels = np.full(n, -1)
    for _ in range(iterations):
        sims = x @ centres.T
        new = sims.argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            if len(members) == 0:
                far = int(np.argmin(sims[np.arange(n), labels]))
                labels[far] = c
                members = x[far : far + 1]
            mean = members.sum(axis=0)
            centres[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return labels, centres


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of unit rows with cosine distance (a cluster of one scores 0, and so does
    a cell whose distances to its own and the nearest other cluster are both ~0)."""
    d = 1.0 - x @ x.T
    k = int(labels.max()) + 1
    onehot = np.eye(k, dtype=np.float32)[labels]
    sizes = onehot.sum(axis=0)
    sums = d @ onehot  # [n, k] distance sums to every cluster
    own = sizes[labels]
    a = sums[np.arange(len(x)), labels] / np.maximum(own - 1, 1)
    other = np.where(onehot > 0, np.inf, sums / np.maximum(sizes, 1))
    b = other.min(axis=1)
    scale = np.maximum(a, b)  # cells with identical vectors split over clusters (a = b = 0) score 0
    s = np.where((own > 1) & (scale > 1e-6), (b - a) / np.maximum(scale, 1e-6), 0.0)
    return float(s.mean())


def choose_k(x: np.ndarray, max_k: int, seed: int = 0, sample: int = 2000, iterations: int = 50) -> tuple[int, dict[int, float]]:
    """The silhouette rule: K in 2..max_k maximising the mean silhouette (cosine distance) of the
    K-means clustering, scored on a fixed random sample of ``sample`` cells; ties go to the smaller K."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    scores = {}
    for k in range(2, min(max_k, len(x)) + 1):
        labels, _ = kmeans(x, k, seed, iterations)
        scores[k] = silhouette(x[pick], labels[pick])
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def balanced_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` indices with the segments as evenly represented as their sizes allow."""
    if n >= labels.size:
        return np.arange(labels.size)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quota = np.zeros(len(groups), int)
    left = n
    while left > 0:  # water-filling: equal shares, a small segment's unused share goes to the others
        open_ = [i for i, g in enumerate(groups) if quota[i] < len(g)]
        share = max(left // len(open_), 1)
        for i in open_:
            take = min(share, len(groups[i]) - quota[i], left)
            quota[i] += take
            left -= take
            if left == 0:
                break
    return np.concatenate([rng.choice(g, size=q, replace=False) for g, q in zip(groups, quota) if q])


class SceneContext:
    """KNN classifier over (unit feature, segment) pairs with a fixed budget (see module docstring)."""

    def __init__(self, k: int, channels: int, config: SegmentConfig, seed: int = 0) -> None:
        self.k, self.config = k, config
        self.rng = np.random.default_rng(seed)
        cap = config.anchor_vectors + config.context_frames * config.frame_vectors
        self.vectors = np.zeros((cap, channels), np.float32)
        self.labels = np.zeros(cap, np.intp)
        self.count = 0  # rows in use
        self.anchors = 0
        self._ring = 0
        self._stored = 0  # frames in the FIFO part

    def start(self, x: np.ndarray, labels: np.ndarray) -> None:
        idx = balanced_sample(labels, self.config.anchor_vectors, self.rng)
        self.anchors = self.count = len(idx)
        self.vectors[: len(idx)] = x[idx]
        self.labels[: len(idx)] = labels[idx]
        self._ring = self._stored = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Soft segments [k, n] of unit rows x [n, C]."""
        sims = x @ self.vectors[: self.count].T
        nn = min(self.config.knn, self.count)
        top = np.argpartition(-sims, nn - 1, axis=1)[:, :nn]
        s = np.take_along_axis(sims, top, axis=1)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / self.config.knn_temperature)
        votes = np.zeros((x.shape[0], self.k), np.float32)
        np.add.at(votes, (np.repeat(np.arange(x.shape[0]), nn), self.labels[top].ravel()), w.ravel())
        return (votes / votes.sum(axis=1, keepdims=True)).T

    def update(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Store a class-balanced sample of a frame's own prediction in the FIFO part (a frame
        with fewer cells than ``frame_vectors`` fills its slot by repeating its sample)."""
        cfg = self.config
        if cfg.context_frames == 0:
            return
        idx = np.resize(balanced_sample(labels, cfg.frame_vectors, self.rng), cfg.frame_vectors)
        start = self.anchors + self._ring * cfg.frame_vectors
        self.vectors[start : start + cfg.frame_vectors] = x[idx]
        self.labels[start : start + cfg.frame_vectors] = labels[idx]
        self._ring = (self._ring + 1) % cfg.context_frames
        self._stored = min(self._stored + 1, cfg.context_frames)
        self.count = self.anchors + self._stored * cfg.frame_vectors


class SegmentSession:
    """One stream of zero-shot semantic segmentation; :meth:`step` per frame (the first starts it)."""

    def __init__(self, runtime: Any, width: int, height: int, segment: SegmentConfig | None = None,
                 session: SessionConfig | None = None) -> None:
        manifest = runtime.manifest
        if manifest.affinity.kind != "features":
            raise InputError(f"segment needs a bundle whose graph returns a feature map; this one returns "
                             f"{manifest.affinity.kind} projections")
        self.config = segment or SegmentConfig()
        self.session_config = session or SessionConfig()
        if self.config.segments > MAX_SEGMENTS or self.config.max_segments > MAX_SEGMENTS:
            raise InputError(f"at most {MAX_SEGMENTS} segments")
        self.width, self.height = int(width), int(height)
        sc = self.session_config
        self.features = Features(manifest, runtime.engines, sc.seed, sc.fresh_noise, sc.inversion_steps)
        self.grid = self.features.grid_size((self.height, self.width))
        self.scaled = self.features.input_size((self.height, self.width))
        self.propagator: Propagator | None = None
        self.context: SceneContext | None = None
        self.k = 0
        self.silhouette: dict[int, float] = {}
        self.timings: dict[str, float] = {}
        self.frames = 0

    def step(self, frame: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """Segment ids (uint8 HxW, 1..K) of a frame; ``probs`` [K, h, w] receives the refined map."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise InputError(f"frame must be uint8 of shape {(self.height, self.width, 3)}")
        t0 = time.perf_counter()
        feats = self.features(frame, self.session_config.color)
        t1 = time.perf_counter()
        x = normalised_rows(feats)
        if self.propagator is None:
            soft = self._start(feats, x)
        else:
            knn = self.context.predict(x).reshape(self.k, *self.grid)
            w = np.float32(self.config.refine_weight)
            soft = knn if w == 0 else (1 - w) * knn + w * self.propagator.predict(feats)
            self.propagator.remember(soft)
            self.context.update(x, soft.reshape(self.k, -1).argmax(axis=0))
        t2 = time.perf_counter()
        labels = self._labels(soft)
        if probs is not None:
            np.copyto(probs, soft)
        self.frames += 1
        self.timings = {**self.features.timings, "segment_ms": (t2 - t1) * 1e3,
                        "total_ms": (time.perf_counter() - t0) * 1e3}
        return labels

    def _start(self, feats: np.ndarray, x: np.ndarray) -> np.ndarray:
        cfg, seed = self.config, self.session_config.seed
        if cfg.segments:
            self.k = cfg.segments
        else:
            self.k, self.silhouette = choose_k(x, cfg.max_segments, seed, cfg.silhouette_sample,
                                               cfg.kmeans_iterations)
        labels, _ = kmeans(x, self.k, seed, cfg.kmeans_iterations)
        onehot = np.eye(self.k, dtype=np.float32)[labels].T.reshape(self.k, *self.grid)
        c = feats.shape[0]
        self.propagator = Propagator(c, *self.grid, self.k, self.session_config.propagation)
        self.propagator.start(feats, onehot)
        self.context = SceneContext(self.k, c, cfg, seed)
        self.context.start(x, labels)
        return onehot

    def _labels(self, soft: np.ndarray) -> np.ndarray:
        up = upsample_bilinear(soft, self.scaled)
        ids = (np.argmax(up, axis=0) + 1).astype(np.uint8)
        return ids if ids.shape == (self.height, self.width) else resize_nearest(ids, (self.height, self.width))

    def close(self) -> None:
        """Release this stream's engine forks."""
        self.features.close()

    @property
    def prob_shape(self) -> tuple[int, int, int]:
        if not self.k:
            raise NotStartedError("the number of segments is known after the first frame")
        return (self.k, *self.grid)

