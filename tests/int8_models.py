"""Small hand-built bundles and clips for the INT8 tests (onnx.helper, no torch, milliseconds to run).

``make_sensitive_bundle`` is a conv net with one node INT8 cannot take: ``amp`` appends four
channels of 1000 x a copy of a feature channel to the tensor that ``mix`` reads, so ``mix``'s
per-tensor int8 input scale (about 1000/127 per step) rounds the informative channels to zero
and the features, and the masks, collapse. Keeping ``mix`` in float (and nothing else) restores
them: the search must find exactly that node.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from diffvos.bundle import GraphEntry, Manifest, sha256_file, write_manifest
from diffvos.io.masks import DAVIS_PALETTE

SENSITIVE_NODE = "mix"


def make_sensitive_bundle(out: Path, height: int = 128, width: int = 192, stride: int = 8, matmul: bool = False,
                          seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = height // stride, width // stride
    w_a = (rng.standard_normal((8, 3, 1, 1)) * 1.5).astype(np.float32)
    b_a = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w_amp = np.zeros((12, 8, 1, 1), np.float32)
    w_amp[:8, :, 0, 0] = np.eye(8)
    w_amp[8:, 0, 0, 0] = 1000.0  # four loud copies of channel 0
    w_mix = np.zeros((16, 12, 1, 1), np.float32)
    w_mix[:, :8, 0, 0] = rng.standard_normal((16, 8)) * 0.8  # reads only the quiet channels
    inits = [numpy_helper.from_array(w_a, "w_a"), numpy_helper.from_array(b_a, "b_a"), numpy_helper.from_array(w_amp, "w_amp"),
             numpy_helper.from_array(w_mix, "w_mix")]
    nodes = [
        helper.make_node("AveragePool", ["x_t"], ["pooled"], kernel_shape=[stride, stride], strides=[stride, stride],
                         name="pool"),
        helper.make_node("Conv", ["pooled", "w_a", "b_a"], ["a"], name="embed"),
        helper.make_node("Conv", ["a", "w_amp"], ["loud"], name="amp"),
        helper.make_node("Conv", ["loud", "w_mix"], ["mixed"], name=SENSITIVE_NODE),
    ]
    last = "mixed"
    if matmul:  # mixing along the width: a MatMul with a constant weight, near the identity
        m = (np.eye(w) + rng.standard_normal((w, w)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(m, "w_width"))
        nodes.append(helper.make_node("MatMul", ["mixed", "w_width"], ["widened"], name="widen"))
        last = "widened"
    nodes += [
        helper.make_node("Tanh", [last], ["act"], name="act"),
        helper.make_node("ReduceMean", ["act"], ["features"], axes=[0], keepdims=1, name="mean"),
    ]
    graph = helper.make_graph(
        nodes, "sensitive_features",
        [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 16, h, w])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, out / "features.onnx")
    manifest = Manifest(
        backbone="toy", timestep=0, alpha_bar=1.0, layer=0, stride=stride, channels=16, ensemble=1,
        height=height, width=width,
        graphs={"features": GraphEntry("features.onnx", sha256_file(out / "features.onnx"),
                                       {"x_t": [1, 3, height, width]}, {"features": [1, 16, h, w]})},
    )
    write_manifest(out, manifest)
    return out


SQUARES = (  # id, colour BGR, (y0, x0), (dy, dx) per frame, side
    (1, (0, 0, 230), (16, 16), (2, 6), 40),
    (2, (230, 190, 0), (72, 128), (-2, -6), 40),
)


def write_clip(folder: Path, n: int = 10, height: int = 128, width: int = 192, tint: int = 0) -> tuple[Path, Path, Path]:
    """(frames folder, first mask PNG, annotation folder) of two squares crossing a colour-gradient
    background (every feature cell differs, so tracking has no ties to break)."""
    video, ann = folder / "frames", folder / "annotations"
    video.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([60 + 120 * xx / width, 40 + 150 * yy / height, np.full_like(xx, 90 + tint)], -1)
    for t in range(n):
        frame = background.astype(np.uint8).copy()
        labels = np.zeros((height, width), np.uint8)
        for oid, colour, (y0, x0), (dy, dx), side in SQUARES:
            y, x = max(y0 + dy * t, 0), max(x0 + dx * t, 0)
            frame[y:y + side, x:x + side] = colour
            labels[y:y + side, x:x + side] = oid
        cv2.imwrite(str(video / f"{t:05d}.png"), frame)
        im = Image.fromarray(labels, "P")
        im.putpalette(DAVIS_PALETTE.tobytes())
        im.save(ann / f"{t:05d}.png")
    return video, ann / "00000.png", ann
