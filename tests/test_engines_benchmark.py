"""Smoke test of the engine-side benchmark (figures are printed, never asserted)."""

from __future__ import annotations

from diffvos.benchmarks import engines
from diffvos.export.toy import make_toy_bundle
from diffvos.sample_clip import moving_squares


def test_cpu_row_and_a_backend_that_does_not_load(tmp_path, capsys):
    bundle = make_toy_bundle(tmp_path / "toy", height=64, width=96)
    frames, _ = moving_squares(3, height=64, width=96)
    cpu = engines.measure(bundle, "cpu", frames)
    assert cpu["provider"] == "CPUExecutionProvider" and cpu["up_bytes"] == cpu["down_bytes"] == 0
    assert cpu["features_ms"] > 0 and cpu["engine_device_bytes"] is None
    assert engines.main(["--bundle", str(bundle), "--frames", "3", "--size", "64x96", "--backends", "cpu", "trt"]) == 0
    out = capsys.readouterr().out
    assert "load average" in out and "\ncpu " in out and "1.00x" in out
    assert "\ntrt " in out  # a row either way: figures where TensorRT runs, the reason where it does not
