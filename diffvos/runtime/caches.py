"""Where diffvos keeps what it builds or downloads: one writable user cache, never a bundle.

``$DIFFVOS_CACHE`` or ``~/.cache/diffvos``. A bundle may sit on a read-only volume (a container
image, a shared model store), and a TensorRT engine belongs to one GPU and one TensorRT/ONNX
Runtime version, not to the bundle: ONNX Runtime's TensorRT engines and timing caches go to
``<cache>/trt/<key>``, the key made from everything that makes an engine unusable elsewhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from diffvos.io.atomic import write_text_atomic

# sonames ONNX Runtime's TensorRT EP may load (it links libnvinfer.so.10 up to ORT 1.31)
LIBNVINFER = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll")


def user_cache_dir() -> Path:
    """``$DIFFVOS_CACHE`` or ``~/.cache/diffvos``."""
    env = os.environ.get("DIFFVOS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffvos"


def libnvinfer_version(names: tuple[str, ...] = LIBNVINFER) -> str | None:
    """The version of the libnvinfer the dynamic loader finds ('10.3.0'), None when there is none.
    ``getInferLibVersion`` returns major*10000 + minor*100 + patch from TensorRT 10 on."""
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            v = int(lib.getInferLibVersion())
        except (OSError, AttributeError):
            continue
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 100000 else f"{v // 1000}.{v // 100 % 10}.{v % 100}"
    return None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def trt_cache_dir(facts: dict[str, Any], root: Path | None = None) -> Path:
    """``<cache>/trt/<key>`` for the engine facts ``facts`` (versions, GPU, graph sha256, build
    options): a readable prefix plus a digest of all of them; ``key.json`` inside records them.
    Created if absent; raises OSError when the cache is not writable."""
    blob = json.dumps(facts, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    prefix = slug(f"{facts.get('gpu', 'gpu')}-trt{facts.get('tensorrt', '')}")
    path = (root or user_cache_dir()) / "trt" / f"{prefix}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    record = path / "key.json"
    if not record.is_file():
        write_text_atomic(record, json.dumps(facts, sort_keys=True, indent=1, default=str) + "\n")
    return path


def timing_cache_file(gpu: str, compute_capability: str, trt_version: str, root: Path | None = None) -> Path:
    """The default TensorRT timing cache of ``diffvos build-engine`` for one GPU and TensorRT version
    (layer timings are reused across graphs and bundles)."""
    name = f"timing-{slug(gpu)}-sm{slug(compute_capability)}-trt{slug(trt_version)}.cache"
    path = (root or user_cache_dir()) / "trt" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
