"""`diffvos bench pipeline|scaling|efficiency|streams|propagation`: options here, the work in ``diffvos.benchmarks``.

This module defines the benchmarks' command-line options with no heavy imports; the benchmark
module (some need torch) is imported only when its subcommand runs. The other benchmarks run as
``python -m diffvos.benchmarks.<name>``.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffvos.cli import Subcommands


REPO = Path(__file__).resolve().parents[2]
DEFAULT_DAVIS = REPO.parent / "shared" / "data" / "davis2016"
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "adm"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "diffvos-bench"


def load_script(name: str) -> ModuleType:
    """The benchmark module ``diffvos.benchmarks.<name>`` (imported on use: some need torch)."""
    return importlib.import_module(f"diffvos.benchmarks.{name}")


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", choices=("adm256", "tiny"), default=["adm256", "tiny"],
                   help="adm256: ADM-256 architecture, random weights, 256x256, E=1; "
                   "tiny: the tiny ADM fixture at 480x832, E=8 (default: both)")
    p.add_argument("--frames", type=int, default=4, help="timed frames per config, after the first (default 4)")
    p.add_argument("--memory", type=int, default=28,
                   help="N: FIFO frames; the memory is prefilled so every timed step sees N+1 context frames")
    p.add_argument("--noise", choices=("shared", "fresh"), default="shared",
                   help="shared (default): both pipelines use the same seeded noise bank, so the masks differ "
                   "by numerics only; fresh: the baseline draws torch noise per frame (as published) and "
                   "the project draws fresh numpy noise per frame")
    p.add_argument("--dense-chunk", type=int, default=520,
                   help="queries per dense affinity block in the baseline (0 = the whole matrix at once, as "
                   "published: 4.5 GB at 480x832 with 29 frames)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all); torch uses its default")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the noise")
    p.add_argument("--davis", default=str(DEFAULT_DAVIS), help="DAVIS-2016 root (default: ../shared/data/davis2016)")
    p.add_argument("--sequence", default="dog-agility", help="DAVIS sequence (default dog-agility)")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic sample clip instead of DAVIS")
    p.add_argument("--fixtures", default=str(DEFAULT_FIXTURES), help="folder with the tiny ADM fixture")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                   help=f"where checkpoints and bundles are made and reused (default {DEFAULT_WORKDIR})")


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="+", default=["30x52", "60x104", "120x208"], help="feature grids h x w")
    p.add_argument("--memories", nargs="+", type=int, default=[1, 2, 4, 8, 16, 28], help="N values (FIFO frames)")
    p.add_argument("--memory-size", default="60x104", help="grid of the N sweep (default 60x104)")
    p.add_argument("--channels", type=int, default=512, help="feature channels C (default 512)")
    p.add_argument("--runs", type=int, default=2, help="timed steps per point (median; default 2)")
    p.add_argument("--feature-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--output", default="scaling.csv", help="CSV path; the PNG plot goes beside it")


def add_efficiency_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", choices=("adm256", "tiny"), default=["adm256", "tiny"])
    p.add_argument("--runs", type=int, default=3, help="timed feature-graph runs (median; default 3)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n float32 matrix product")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixtures", default=str(DEFAULT_FIXTURES))
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR))


def add_streams_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", nargs="+", help="bundle directories (default: a toy bundle built here)")
    p.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8], help="stream counts (default 1 2 4 8)")
    p.add_argument("--frames", type=int, default=6, help="timed frames per stream and repeat (default 6)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats per mode (median; default 3)")
    p.add_argument("--size", help="HxW of the synthetic frames (default: the bundle's size, or 64x96 if dynamic)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: its own)")
    p.add_argument("--memory", type=int, default=4, help="memory frames per stream (default 4)")


def add_propagation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="timed steps per kernel (after one warm-up step)")
    p.add_argument("--threads", type=int, nargs="+", default=[0], help="--threads values to run (0: the runtime's "
                   "choice); e.g. 1 2")
    p.add_argument("--davis", type=Path, help="DAVIS-2016 root: real frames instead of Gaussian features")
    p.add_argument("--sequence", default="breakdance-flare")
    p.add_argument("--mag", default="12", help="MAG-Filter: off, adaptive or a radius")
    p.add_argument("--feature-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--size", default="60x104", help="feature grid HxW")
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--graph-only", action="store_true", help="time the graph alone")
    p.add_argument("--dense", action="store_true", help="also the numpy kernel against the dense formula")
    p.add_argument("--dense-chunk", type=int, default=520, help="queries per dense chunk at full size")
    p.add_argument("--tiles", default="", help="comma-separated numpy tile sides to sweep (e.g. 6,8,12,16)")
    p.add_argument("--session", type=Path, metavar="BUNDLE", help="instead: the whole step through Session.step "
                   "with this bundle, both kernels, per-stage ms and bytes per frame (DAVIS frames with --davis)")


def register(kinds: Subcommands) -> None:
    """Add the pipeline, scaling, efficiency, streams and propagation subcommands to ``diffvos bench``."""
    specs = (
        ("pipeline", "pipeline", add_pipeline_arguments,
         "the published pipeline (PyTorch eager, dense) vs the project's (ONNX Runtime, windowed): ms per stage"),
        ("scaling", "scaling", add_scaling_arguments,
         "one propagation step as the grid and the memory grow: time and peak memory (CSV + PNG)"),
        ("efficiency", "efficiency", add_efficiency_arguments,
         "FLOPs of the feature graph, achieved FLOP/s and the share of the machine's matmul peak"),
        ("streams", "streams", add_streams_arguments,
         "many streams on one runtime: summed frames/s over 1, 2, 4, 8 streams, batched vs one by one"),
        ("propagation", "propagation", add_propagation_arguments,
         "one propagation step at the published setting: the device step's graph vs the numpy kernel"),
    )
    for name, script, add, text in specs:
        p = kinds.add_parser(name, help=text, description=text)
        add(p)
        p.set_defaults(func=_runner(script))


def _runner(script: str):
    def run(args: argparse.Namespace) -> int:
        return int(load_script(script).run(args) or 0)

    return run
