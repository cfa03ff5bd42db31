"""Cost of the method-family modes: DDIM inversion and attention-kernel propagation.

    python -m diffvos.benchmarks.family --bundle B [--steps 1,5,10] [--runs 5]
    python -m diffvos.benchmarks.family --attention [--grid 30x52] [--heads 8] [--head-dim 64]

``--bundle`` (one with a noise-prediction graph, ``diffvos export ... --noise-graph``): per
inversion step count S, the graph calls and the median ms of one frame's inversion, against the
median ms of one random-noise injection (the default) and of one feature-graph call in the same
run. ``--attention``: one propagation step of an attention bundle's geometry (H heads of d
channels, per-head kernel) against the feature kernel on a C = H*d feature map, same grid and
memory, alternating in one process. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_inversion(bundle: str, steps: list[int], runs: int) -> None:
    import diffvos
    from diffvos.runtime.ddim import DDIMInverter
    from diffvos.runtime.noise import NoiseInjector

    runtime = diffvos.Runtime(bundle, backend="cpu")
    m = runtime.manifest
    if m.ddim is None:
        raise SystemExit(f"{bundle}: no noise-prediction graph (export with --noise-graph)")
    size = (m.height, m.width) if m.latent is None else (m.height // m.latent.downsample, m.width // m.latent.downsample)
    x0 = np.random.default_rng(0).uniform(-1, 1, (m.input_channels, *size)).astype(np.float32)
    noise = NoiseInjector(m.alpha_bar, m.ensemble, x0.shape)
    feed = {runtime.engines["features"].inputs[0].name: noise(x0)}
    print(f"bundle {bundle}: {m.backbone}, input {m.input_channels}x{size[0]}x{size[1]}, t={m.timestep}, E={m.ensemble}")
    noise_ms = _median_ms(lambda: noise(x0), runs)
    feat_ms = _median_ms(lambda: runtime.engines["features"].infer(feed), runs)
    print(f"random noise injection: {noise_ms:.3f} ms; feature graph: {feat_ms:.1f} ms (median of {runs})")
    for s in steps:
        inv = DDIMInverter(runtime.engines[m.ddim.graph], m.ddim, m.timestep, s)
        ms = _median_ms(lambda: inv(x0), runs)
        print(f"DDIM inversion S={s:>3}: {s} graph calls, {ms:9.1f} ms ({ms / s:.1f} ms per call; "
              f"{ms / feat_ms:.2f}x the feature graph)")


def bench_attention(grid: tuple[int, int], heads: int, head_dim: int, memory: int, runs: int) -> None:
    from diffvos.config import PropagationConfig
    from diffvos.runtime.attention import AttentionPropagator
    from diffvos.runtime.propagation import Propagator

    rng = np.random.default_rng(0)
    h, w = grid
    cfg = PropagationConfig(memory=memory)
    att = AttentionPropagator(heads, head_dim, h, w, 3, cfg)
    feat = Propagator(heads * head_dim, h, w, 3, cfg)
    onehot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (h, w))].transpose(2, 0, 1)
    frames = [rng.standard_normal((2 * heads * head_dim, h, w)).astype(np.float32) for _ in range(memory + 2)]
    att.start(frames[0], onehot)
    feat.start(frames[0][: heads * head_dim], onehot)
    for f in frames[1 : memory + 1]:  # fill the memory
        att.step(f)
        feat.step(f[: heads * head_dim])
    q = frames[-1]
    a_ms, f_ms = [], []
    for _ in range(runs):  # alternate so that machine load hits both alike
        a_ms.append(_median_ms(lambda: att.predict(q), 1))
        f_ms.append(_median_ms(lambda: feat.predict(q[: heads * head_dim]), 1))
    a, f = statistics.median(a_ms), statistics.median(f_ms)
    print(f"grid {h}x{w}, {memory + 1} context frames, r={cfg.radius}, k={cfg.topk}: attention {heads} heads x "
          f"{head_dim}: {a:.0f} ms; feature kernel C={heads * head_dim}: {f:.0f} ms; ratio {a / f:.2f} "
          f"(median of {runs})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="a bundle with a noise-prediction graph")
    p.add_argument("--steps", default="1,5,10", help="inversion step counts (default 1,5,10)")
    p.add_argument("--attention", action="store_true", help="time attention-kernel propagation")
    p.add_argument("--grid", default="30x52", help="feature grid HxW for --attention (default 30x52)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--memory", type=int, default=28)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    if args.bundle:
        bench_inversion(args.bundle, [int(s) for s in args.steps.split(",")], args.runs)
    if args.attention:
        h, w = (int(v) for v in args.grid.lower().split("x"))
        bench_attention((h, w), args.heads, args.head_dim, args.memory, args.runs)
    if not (args.bundle or args.attention):
        p.error("give --bundle and/or --attention")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
