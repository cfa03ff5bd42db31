"""Self-attention maps as the propagation kernel (README, "Attention-kernel propagation").

An attention bundle's graph returns the query and key projections of one self-attention layer of
the U-Net, [1, 2*H*d, h, w]: queries head-major, then keys. The attention of a query frame over
its memory frames is that layer's own kernel extended in time: per head h, query position i and
memory position j (first frame + FIFO, any context frame)

    A_h[j, i] = softmax_j(q_h[i] . k_h[j] / sqrt(d))

with the local window applied as the attention mask (softmax over the window's positions, as
neighbourhood attention does), then the same top-k, MAG-Filter and renormalisation as the
feature kernel. Each head is one :class:`~diffvos.runtime.propagation.Propagator` on raw
(unnormalised) projections at temperature sqrt(d): exp((s - max)/T) renormalised over the kept
correspondences is exactly the softmax restricted to them. Heads are combined by weights w_h
(sum 1), applied to the heads' propagated soft masks, i.e. the frame propagates through the
combined affinity sum_h w_h A_h (top-k taken per head). Memory frames are remembered by their
keys, queried by the new frame's queries.

Head weights: ``uniform`` (1/H), or ``adaptive``: on the first frame each head propagates the
given mask onto the first frame itself (memory = that frame's keys and mask, query = its
queries); its score is the mean IoU over objects between the argmax of that propagation and
the given mask on the feature grid; w_h = score_h / sum(score), uniform when every score is 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from diffvos.config import PropagationConfig
from diffvos.errors import InputError
from diffvos.runtime.postprocess import HostLabels
from diffvos.runtime.propagation import Propagator


class BankGroup:
    """The heads' memory banks seen as one (size and frame count, for ``SessionInfo``)."""

    def __init__(self, heads: list[Propagator]) -> None:
        self.heads = heads

    @property
    def nbytes(self) -> int:
        return sum(p.bank.nbytes for p in self.heads)

    def __len__(self) -> int:
        return len(self.heads[0].bank)


def grid_object_iou(labels: np.ndarray, reference: np.ndarray, num_classes: int) -> float:
    """Mean IoU over objects 1..K of two label maps on the feature grid (an empty union counts 1)."""
    scores = []
    for c in range(1, num_classes):
        a, b = labels == c, reference == c
        union = np.count_nonzero(a | b)
        scores.append(1.0 if union == 0 else np.count_nonzero(a & b) / union)
    return float(np.mean(scores)) if scores else 1.0


def weights_from_scores(scores: np.ndarray) -> np.ndarray:
    """Adaptive head weights: the scores normalised to sum 1, uniform when every score is 0."""
    return scores / scores.sum() if scores.sum() > 0 else np.full(scores.size, 1.0 / scores.size)


class AttentionPropagator(HostLabels):
    """The :class:`Propagator` interface (start / predict / remember / step / add_objects /
    remove_object) over an attention bundle's per-head queries and keys."""

    def __init__(self, heads: int, head_dim: int, h: int, w: int, num_classes: int,
                 config: PropagationConfig | None = None) -> None:
        if heads < 1 or head_dim < 1:
            raise InputError(f"attention propagation needs heads >= 1 and head_dim >= 1, got {heads}, {head_dim}")
        self.config = config or PropagationConfig()
        self.heads, self.head_dim, self.h, self.w = heads, head_dim, h, w
        self.channels = 2 * heads * head_dim
        self.num_classes = num_classes
        head_config = dataclasses.replace(self.config, temperature=math.sqrt(head_dim))
        self.per_head = [Propagator(head_dim, h, w, num_classes, head_config, normalise=False) for _ in range(heads)]
        self.weights = np.full(heads, 1.0 / heads)
        self.head_scores: np.ndarray | None = None  # adaptive weighting's per-head IoU on the first frame

    # -- the Propagator interface -------------------------------------------------------------
    def start(self, features: np.ndarray, onehot: np.ndarray) -> None:
        """First frame: its keys and one-hot mask start every head's memory; adaptive weights are
        set from each head's propagation of the mask onto the frame itself."""
        q, k = self.split(features)
        for head, prop in enumerate(self.per_head):
            prop.start(k[head], onehot)
        if self.config.head_weights == "adaptive":
            reference = onehot.argmax(axis=0)
            scores = np.array([grid_object_iou(prop.predict(q[head]).argmax(axis=0), reference, self.num_classes)
                               for head, prop in enumerate(self.per_head)])
            self.head_scores = scores
            self.weights = weights_from_scores(scores)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Soft mask (K+1, h, w): the heads' propagations, weighted and summed (not remembered)."""
        q, k = self.split(features)
        soft = np.zeros((self.num_classes, self.h, self.w), np.float32)
        for head, prop in enumerate(self.per_head):
            soft += np.float32(self.weights[head]) * prop.predict(q[head], k[head])
        return soft

    def remember(self, mask: np.ndarray) -> None:
        """Every head remembers the frame by its own keys, with the same mask."""
        for prop in self.per_head:
            prop.remember(mask)

    def step(self, features: np.ndarray) -> np.ndarray:
        soft = self.predict(features)
        self.remember(soft)
        return soft

    def add_objects(self, n: int = 1) -> None:
        for prop in self.per_head:
            prop.add_objects(n)
        self.num_classes = self.per_head[0].num_classes

    def remove_object(self, k: int) -> None:
        for prop in self.per_head:
            prop.remove_object(k)
        self.num_classes = self.per_head[0].num_classes

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def bank(self) -> BankGroup:
        return BankGroup(self.per_head)

    @property
    def scratch_nbytes(self) -> int:
        return sum(p.scratch_nbytes for p in self.per_head)

    def split(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[2*H*d, h, w] -> queries, keys, each [H, d, h, w] (views)."""
        features = np.asarray(features)  # a feature map left on the device comes to the host here
        if features.shape != (self.channels, self.h, self.w):
            raise InputError(f"attention features are {features.shape}, expected {(self.channels, self.h, self.w)} "
                             f"(queries then keys of {self.heads} heads x {self.head_dim})")
        qk = features.reshape(2, self.heads, self.head_dim, self.h, self.w)
        return qk[0], qk[1]
