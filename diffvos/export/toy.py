"""A small, real bundle built with onnx.helper: no torch, no checkpoint, milliseconds to run.

Its feature graph is average-pool(stride) -> 1x1 conv (fixed random weights) -> tanh -> mean
over each stream's E draws (several streams per call up to ``max_streams``; 1 builds the older
single-stream graph), so colours map to distinct feature vectors and coloured objects can be
tracked end to end: for smoke tests of an installation, benchmarks of the runtime's own
overhead, and the test suite. Needs ``onnx`` (the export extra), not torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffvos.bundle import GraphEntry, Manifest, sha256_file, write_manifest


def make_toy_bundle(
    out: str | Path,
    height: int | None = 64,
    width: int | None = 96,
    stride: int = 8,
    channels: int = 16,
    ensemble: int = 1,
    alpha_bar: float = 1.0,
    seed: int = 0,
    max_streams: int = 8,
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from diffvos.bundle import StreamBatch
    from diffvos.export.batching import batch_streams

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dynamic = height is None
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((channels, 3, 1, 1)).astype(np.float32) * 2.0
    h_dim = "height" if dynamic else height
    w_dim = "width" if dynamic else width
    fh = "feat_height" if dynamic else height // stride
    fw = "feat_width" if dynamic else width // stride
    nodes = [
        helper.make_node("AveragePool", ["x_t"], ["pooled"], kernel_shape=[stride, stride], strides=[stride, stride]),
        helper.make_node("Conv", ["pooled", "w"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["act"]),
        helper.make_node("ReduceMean", ["act"], ["features"], axes=[0], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_features",
        [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [ensemble, 3, h_dim, w_dim])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, channels, fh, fw])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if max_streams > 1:
        model = batch_streams(model, ensemble)
    onnx.checker.check_model(model)
    onnx.save(model, out / "features.onnx")
    manifest = Manifest(
        backbone="toy", timestep=0, alpha_bar=alpha_bar, layer=0, stride=stride, channels=channels,
        ensemble=ensemble, height=height, width=width, dynamic=dynamic,
        min_size=[stride, stride] if dynamic else None, max_size=[2048, 2048] if dynamic else None,
        graphs={"features": GraphEntry("features.onnx", sha256_file(out / "features.onnx"),
                                       {"x_t": [_dim(model.graph.input[0], 0), 3, h_dim, w_dim]},
                                       {"features": [_dim(model.graph.output[0], 0), channels, fh, fw]})},
        streams=StreamBatch(max_streams=max_streams, opt_streams=max_streams),
    )
    if dynamic:
        manifest.preprocess.short_side = 64
        manifest.preprocess.multiple = stride
    write_manifest(out, manifest)
    return out


def _dim(value_info, axis: int) -> int | str:
    d = value_info.type.tensor_type.shape.dim[axis]
    return d.dim_param or d.dim_value
