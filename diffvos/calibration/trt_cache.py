"""The legacy TensorRT (<= 10) text calibration cache, written from the same activation ranges.

Format: a header ``TRT-<version>-EntropyCalibration2`` then one ``tensor: <hex>`` line per
tensor, the hex being the big-endian IEEE-754 bits of the float32 scale (dynamic range is
±127·scale). TensorRT 11 removed implicit calibration; Q/DQ graphs are the way there.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from diffvos.calibration.options import DEFAULT_TRT_VERSION
from diffvos.io.atomic import write_text_atomic


def trt_version_number(version: str) -> int:
    """TensorRT's integer version as ``getInferLibVersion`` reports it (8.6.1 -> 8601, 10.3.0 -> 100300)."""
    parts = [int(p) for p in version.split(".")[:3]] + [0, 0]
    major, minor, patch = parts[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def scale_hex(amax: float) -> str:
    """8 hex digits of the float32 scale amax/127."""
    return struct.pack(">f", float(amax) / 127.0).hex()


def hex_to_amax(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0] * 127.0


def amax_from_ranges(ranges) -> dict[str, float]:
    """ONNX Runtime ``TensorsData`` (or a name -> (low, high) mapping) -> name -> max |value|."""
    data = getattr(ranges, "data", ranges)
    out = {}
    for name, value in data.items():
        if hasattr(value, "range_value"):
            low, high = value.range_value
        else:
            low, high = value
        out[name] = float(np.max(np.abs(np.concatenate([np.ravel(low), np.ravel(high)]))))
    return out


def format_cache(amax: Mapping[str, float], version: str = DEFAULT_TRT_VERSION) -> str:
    lines = [f"TRT-{trt_version_number(version)}-EntropyCalibration2"]
    for name in sorted(amax):
        if amax[name] > 0:  # a tensor that is always zero has no usable range: leave it to TensorRT
            lines.append(f"{name}: {scale_hex(amax[name])}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, name -> amax): the reverse of :func:`format_cache`, for tests and inspection."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("not a TensorRT calibration cache (no TRT- header)")
    out = {}
    for ln in lines[1:]:
        name, _, hx = ln.rpartition(":")
        out[name.strip()] = hex_to_amax(hx.strip())
    return lines[0], out


def write_cache(path: str | Path, ranges, version: str = DEFAULT_TRT_VERSION) -> Path:
    write_text_atomic(path, format_cache(amax_from_ranges(ranges), version))
    return Path(path)
