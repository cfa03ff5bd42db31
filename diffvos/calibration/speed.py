"""INT8 against FP32 on ONNX Runtime's CPU provider, for the calibration report.

Both graphs are loaded once and run alternately on the same input (round robin, the starting
graph rotating), so load from other work on the machine hits both alike; the medians are
reported. TensorRT-placement Q/DQ graphs (Q/DQ on inputs only) are *not* fused into integer
kernels by ONNX Runtime's CPU provider (it needs DQ -> op -> Q), so they run DequantizeLinear
plus the float op and are slower than FP32 there: the report says so and recommends FP32 on the CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffvos.bundle import CpuSpeed
from diffvos.runtime.ort_engine import OrtLoader

CPU_NOTE_SLOWER = ("INT8 Q/DQ runs slower than FP32 on ONNX Runtime's CPU provider (the TensorRT Q/DQ placement "
                   "is not fused into integer CPU kernels): use the FP32 bundle on the CPU; INT8 is for TensorRT")
CPU_NOTE_FASTER = "INT8 Q/DQ runs faster than FP32 on ONNX Runtime's CPU provider here"


def cpu_speed(fp32: str | Path, int8: str | Path, x: np.ndarray, runs: int = 5, threads: int = 0) -> CpuSpeed:
    """Median ms per call of each graph on ``x`` over ``runs`` alternating rounds (after a warm-up)."""
    engines = [OrtLoader(Path(p), backend="cpu", threads=threads)() for p in (fp32, int8)]
    try:
        feeds = [{e.inputs[0].name: x} for e in engines]
        for e, f in zip(engines, feeds):
            e.infer(f)
        times: list[list[float]] = [[], []]
        for r in range(max(runs, 1)):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                engines[i].infer(feeds[i])
                times[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        for e in engines:
            e.close()
    fp32_ms, int8_ms = (float(np.median(t)) for t in times)
    speedup = fp32_ms / int8_ms
    return CpuSpeed(fp32_ms=round(fp32_ms, 2), int8_ms=round(int8_ms, 2), speedup=round(speedup, 3), runs=max(runs, 1),
                    threads=threads, note=CPU_NOTE_SLOWER if speedup < 1.0 else CPU_NOTE_FASTER)
