"""Which propagator a session gets: the bundle's affinity kind (feature or attention kernel) and
the session's ``propagation_kernel`` (the device-resident graph or the numpy reference)."""

from __future__ import annotations

from typing import Any

from diffvos.bundle import Affinity
from diffvos.config import PropagationConfig
from diffvos.errors import BundleError
from diffvos.runtime.attention import AttentionPropagator
from diffvos.runtime.device_step import GraphPropagator
from diffvos.runtime.graph_engines import GraphEngines
from diffvos.runtime.postprocess import LabelSpec
from diffvos.runtime.propagation import Propagator
from diffvos.runtime.propagation_graph import GraphSpec


def propagator_for(affinity: Affinity, channels: int, h: int, w: int, num_classes: int,
                   config: PropagationConfig | None = None, *, graphs: GraphEngines | None = None,
                   labels: LabelSpec | None = None, out_hw: tuple[int, int] | None = None,
                   io: Any = None) -> Propagator | AttentionPropagator | GraphPropagator:
    """The propagator a bundle's affinity kind and the session's kernel call for: the propagation
    graph (:mod:`diffvos.runtime.device_step`) with ``propagation_kernel="graph"`` when the runtime's
    ``graphs`` are given, the numpy kernels otherwise (and for grids with fewer than ``topk`` cells,
    which the graph's blocks cannot hold). ``labels``/``out_hw``: the label maps the graph makes;
    ``io``: the stream's :class:`~diffvos.runtime.device.DeviceIO`."""
    config = config or PropagationConfig()
    if affinity.kind not in ("features", "attention"):
        raise BundleError(f"unknown affinity kind {affinity.kind!r}")
    attention = affinity.kind == "attention"
    if attention and 2 * affinity.heads * (affinity.head_dim or 0) != channels:
        raise BundleError(f"attention bundle: features have {channels} channels, the manifest says 2 x "
                          f"{affinity.heads} heads x {affinity.head_dim}")
    if graphs is not None and config.propagation_kernel == "graph" and h * w >= config.topk:
        spec = GraphSpec.for_config(config, h, w, affinity.head_dim if attention else channels,
                                    heads=affinity.heads if attention else 1, attention=attention, labels=labels)
        return GraphPropagator(graphs, spec, num_classes, io or graphs.device_io(), out_hw, config.head_weights)
    if attention:
        return AttentionPropagator(affinity.heads, affinity.head_dim, h, w, num_classes, config)
    return Propagator(channels, h, w, num_classes, config)
