"""The published pipeline (PyTorch eager, full U-Net + hooks, dense affinity) vs the project's
(ONNX Runtime on the CPU, the exported bundle, windowed propagation), same frames, same weights.

    python -m diffvos.benchmarks.pipeline [--configs adm256 tiny] [--frames 4] [--noise shared|fresh]
    diffvos bench pipeline ...           (same options)

Configs: ``adm256`` = the ADM-256 uncond architecture with random weights (seeded; saved to a
.pt from which the bundle is exported and the baseline loaded) at 256x256, E=1; ``tiny`` = the
tiny ADM fixture at 480x832, E=8. Decoder layer 6, t=30, N=28 FIFO frames (29 context frames).

Both pipelines live in one process and run alternately frame by frame (order swapped every
frame). After the first frame the memory of each is prefilled with copies of the first frame,
so every timed step sees N+1 context frames; prefill is not timed. Medians are over the timed
frames. Memory: weights = bytes of the tensors each pipeline holds (the torch model's state
dict; the ONNX graph file(s) ONNX Runtime loads); step peak = the highest RSS during its steps
(VmHWM reset through /proc/self/clear_refs before each step) minus the RSS just before the step;
both pipelines stay loaded, so the process peak during either's steps includes both. ONNX
Runtime keeps its memory arena between runs, so its working memory is sized on the first frame
and then stays resident: the first-frame peak (RSS above the level before that frame, measured
the same way) is the comparable working-memory figure; the later step peak understates it.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STAGES = ("preprocess_ms", "features_ms", "propagate_ms", "postprocess_ms", "total_ms")


@dataclass
class Case:
    """One benchmark configuration."""

    name: str
    height: int
    width: int
    ensemble: int
    layer: int = 6
    timestep: int = 30
    config_json: str | None = None  # None: the ADM-256 defaults
    state_dict: str | None = None  # None: random weights made from the seed
    label: str = ""


def make_case(name: str, fixtures: str | Path) -> Case:
    if name == "adm256":
        return Case("adm256", 256, 256, 1, label="ADM-256 (random weights) 256x256 E=1")
    if name == "tiny":
        fx = Path(fixtures)
        return Case("tiny", 480, 832, 8, config_json=str(fx / "adm_tiny_config.json"),
                    state_dict=str(fx / "adm_tiny_state_dict.pt"), label="tiny ADM fixture 480x832 E=8")
    raise ValueError(f"unknown config {name!r}")


# -- memory ---------------------------------------------------------------------------------------
def _status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    return _status_mib("VmHWM")


# -- model, checkpoint and bundle -----------------------------------------------------------------
def model_config(case: Case):
    from diffvos.export.adm import ADMConfig

    return ADMConfig.from_json(case.config_json) if case.config_json else ADMConfig()


def checkpoint_for(case: Case, workdir: Path, seed: int) -> Path:
    """The case's weights as a .pt: the fixture, or a seeded random ADM saved once in ``workdir``."""
    if case.state_dict:
        path = Path(case.state_dict)
        if not path.is_file():
            raise SystemExit(f"bench pipeline: fixture missing: {path}")
        return path
    import torch

    from diffvos.export.adm import ADMUNet

    path = workdir / f"{case.name}-random-seed{seed}.pt"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"  making random weights (seed {seed}) -> {path}", flush=True)
        torch.manual_seed(seed)
        model = ADMUNet(model_config(case))
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
        del model
        gc.collect()
    return path


def bundle_for(case: Case, checkpoint: Path, workdir: Path) -> Path:
    """Export (once) the case's bundle with ``prepare_adm`` + ``write_bundle``, as `diffvos export adm` does."""
    from diffvos.bundle import read_manifest

    out = workdir / f"bundle-{checkpoint.stem}-{case.height}x{case.width}-e{case.ensemble}-l{case.layer}-t{case.timestep}"
    if out.is_dir():
        try:
            read_manifest(out, verify_files=False)
            return out
        except Exception:  # noqa: BLE001 - a broken leftover: export again
            pass
    from diffvos.export.backbones import prepare_adm
    from diffvos.export.onnx_export import write_bundle

    print(f"  exporting bundle -> {out}", flush=True)
    prepared = prepare_adm(checkpoint, model_config=case.config_json, height=case.height, width=case.width,
                           layer=case.layer, timestep=case.timestep, ensemble=case.ensemble)
    write_bundle(prepared, out, force=True, log=lambda s: print("   ", s, flush=True))
    del prepared
    gc.collect()
    return out


# -- frames --------------------------------------------------------------------------------------
def load_clip(davis: str | Path, sequence: str, count: int, workdir: str | Path,
              synthetic: bool = False) -> tuple[list[np.ndarray], np.ndarray, str]:
    """``count`` BGR frames and the first frame's label map (ids 0..K), from DAVIS or the synthetic clip."""
    from diffvos.io.frames import open_frames
    from diffvos.io.masks import read_mask

    root = Path(davis) / "JPEGImages" / "480p" / sequence
    if synthetic or not root.is_dir():
        if not synthetic:
            print(f"DAVIS sequence not found at {root}: using the synthetic clip instead")
        from diffvos.sample_clip import make_clip

        frame_dir, mask_path = make_clip(Path(workdir) / "clip", frames=max(count, 2))
        source = "synthetic clip (diffvos.sample_clip, 480x854)"
    else:
        frame_dir = root
        mask_path = Path(davis) / "Annotations" / "480p" / sequence / "00000.png"
        source = f"DAVIS-2016 {sequence} (480x854)"
    clip = open_frames(frame_dir)
    if len(clip) < count:
        raise SystemExit(f"bench pipeline: {frame_dir} has {len(clip)} frames, {count} needed")
    frames = [f.bgr for f in clip.select(range(count))]
    return frames, read_mask(mask_path).labels, source


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU over the object ids present in either map (background excluded); 1 when both are empty."""
    from diffvos.evaluation.davis import mean_object_iou

    ids = np.union1d(np.unique(a), np.unique(b))
    return mean_object_iou(a, b, [int(k) for k in ids if k > 0])


# -- the two pipelines ----------------------------------------------------------------------------
@dataclass
class Measured:
    timings: list[dict[str, float]] = field(default_factory=list)
    load_mib: float = 0.0  # bytes of the weights the pipeline holds, MiB
    first_frame_mib: float = 0.0  # peak RSS above the level before the first frame (arenas are sized here)
    step_peak_mib: float = 0.0  # highest RSS above the pre-step level during a step
    process_peak_mib: float = 0.0  # highest process RSS during its steps
    labels: list[np.ndarray] = field(default_factory=list)

    def median(self, stage: str) -> float:
        return statistics.median(t[stage] for t in self.timings)


class ProjectPipeline:
    """The project's path: a Runtime (ONNX Runtime, CPU) and one Session (windowed propagation)."""

    def __init__(self, bundle: Path, memory: int, threads: int, seed: int, fresh: bool,
                 feature_dtype: str = "float16") -> None:
        from diffvos.config import PropagationConfig, SessionConfig
        from diffvos.runtime.session import Runtime

        self.runtime = Runtime(bundle, backend="cpu", threads=threads)
        self.config = SessionConfig(seed=seed, fresh_noise=fresh,
                                    propagation=PropagationConfig(memory=memory, feature_dtype=feature_dtype))
        self.session = None
        self.timings: dict[str, float] = {}

    def start(self, bgr: np.ndarray, labels: np.ndarray) -> None:
        self.session = self.runtime.session(bgr.shape[1], bgr.shape[0], self.config)
        self.session.step(bgr, mask=labels)

    def prefill(self, n: int) -> None:
        self.session.propagator.bank.repeat_first(n)

    def step(self, bgr: np.ndarray) -> np.ndarray:
        labels = self.session.step(bgr)
        t = self.session.timings
        self.timings = {"preprocess_ms": t["preprocess_ms"], "features_ms": t["vae_ms"] + t["features_ms"],
                        "propagate_ms": t["propagate_ms"], "postprocess_ms": t["postprocess_ms"],
                        "total_ms": t["total_ms"]}
        return labels


def build_pipelines(case: Case, checkpoint: Path, bundle: Path, *, memory: int, noise: str, seed: int,
                    dense_chunk: int | None, threads: int = 0, feature_dtype: str = "float16"):
    """(baseline, project, load MiB of each): the same weights, the same noise when ``noise='shared'``."""
    from diffvos.export.adm import load_adm

    bp = _baseline_module()
    shared = None
    if noise == "shared":  # the project's fixed bank: NoiseInjector draws it from default_rng(seed)
        shared = np.random.default_rng(seed).standard_normal((case.ensemble, 3, case.height, case.width),
                                                               dtype=np.float32)
    model = load_adm(checkpoint, model_config(case))
    baseline = bp.BaselinePipeline(model, (case.height, case.width), case.timestep, case.layer, case.ensemble,
                                   memory=memory, noise=shared, dense_chunk=dense_chunk, seed=seed)
    project = ProjectPipeline(bundle, memory, threads, seed, fresh=noise == "fresh", feature_dtype=feature_dtype)
    torch_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    graphs = project.runtime.manifest.graphs.values()
    onnx_bytes = sum((bundle / g.file).stat().st_size + ((bundle / g.external_data).stat().st_size
                                                          if g.external_data else 0) for g in graphs)
    return baseline, project, (torch_bytes / 2**20, onnx_bytes / 2**20)


def _baseline_module():
    from diffvos.benchmarks import baseline_pipeline

    return baseline_pipeline


def run_case(case: Case, frames: list[np.ndarray], labels: np.ndarray, *, workdir: Path, memory: int,
             noise: str, seed: int, dense_chunk: int | None, threads: int = 0,
             feature_dtype: str = "float16", bundle: Path | None = None, log=None) -> dict[str, Measured]:
    """Start both pipelines on frames[0], prefill, then step both alternately over frames[1:].

    ``bundle``: an existing bundle exported from the case's checkpoint (default: made in ``workdir``).
    """
    log = log or (lambda s: print(s, flush=True))
    checkpoint = checkpoint_for(case, workdir, seed)
    bundle = bundle or bundle_for(case, checkpoint, workdir)
    baseline, project, loads = build_pipelines(case, checkpoint, bundle, memory=memory, noise=noise, seed=seed,
                                               dense_chunk=dense_chunk, threads=threads, feature_dtype=feature_dtype)
    results = {"baseline": Measured(load_mib=loads[0]), "project": Measured(load_mib=loads[1])}
    pipes = {"baseline": baseline, "project": project}
    log(f"  first frame (both pipelines), memory prefilled to {memory} FIFO frames ...")
    can_reset = reset_peak()
    for name, p in pipes.items():
        gc.collect()
        before = rss_mib()
        reset_peak()
        p.start(frames[0], labels)
        results[name].first_frame_mib = (peak_mib() if can_reset else rss_mib()) - before
        p.prefill(memory)
    for i, bgr in enumerate(frames[1:], 1):
        order = ("baseline", "project") if i % 2 else ("project", "baseline")
        for name in order:
            gc.collect()
            before = rss_mib()
            reset_peak()
            out = pipes[name].step(bgr)
            m = results[name]
            peak = peak_mib() if can_reset else rss_mib()
            m.step_peak_mib = max(m.step_peak_mib, peak - before)
            m.process_peak_mib = max(m.process_peak_mib, peak)
            m.timings.append(dict(pipes[name].timings))
            m.labels.append(out)
        log(f"  frame {i}/{len(frames) - 1}: baseline {results['baseline'].timings[-1]['total_ms'] / 1e3:.1f} s, "
            f"project {results['project'].timings[-1]['total_ms'] / 1e3:.1f} s")
    baseline.close()
    return results


def format_results(case: Case, results: dict[str, Measured], header: str = "") -> str:
    b, p = results["baseline"], results["project"]
    lines = [f"### {case.label}" + (f" ({header})" if header else ""),
             "| stage | published (torch eager) ms | project (ORT CPU) ms | ratio |", "|---|---:|---:|---:|"]
    for stage in STAGES:
        mb, mp = b.median(stage), p.median(stage)
        ratio = f"{mb / mp:.1f}x" if mp > 0 else "-"
        lines.append(f"| {stage.removesuffix('_ms')} | {mb:.1f} | {mp:.1f} | {ratio} |")
    fb, fp = 1e3 / b.median("total_ms"), 1e3 / p.median("total_ms")
    lines.append(f"| frames/s | {fb:.3f} | {fp:.3f} | {fp / fb:.1f}x |")
    lines.append(f"| weights held, MiB (tensor bytes) | {b.load_mib:.0f} | {p.load_mib:.0f} | "
                 f"{b.load_mib / max(p.load_mib, 1e-9):.1f}x |")
    lines.append(f"| first-frame peak above the RSS before it, MiB | {b.first_frame_mib:.0f} | "
                 f"{p.first_frame_mib:.0f} | {b.first_frame_mib / max(p.first_frame_mib, 1e-9):.1f}x |")
    lines.append(f"| step peak above pre-step RSS, MiB | {b.step_peak_mib:.0f} | {p.step_peak_mib:.0f} | "
                 f"{b.step_peak_mib / max(p.step_peak_mib, 1e-9):.1f}x |")
    lines.append(f"| process peak RSS during its steps, MiB (both loaded) | {b.process_peak_mib:.0f} | "
                 f"{p.process_peak_mib:.0f} | |")
    ious = [mean_iou(x, y) for x, y in zip(b.labels, p.labels)]
    lines.append(f"\nmask agreement (mean IoU over {len(ious)} frames, objects only): {np.mean(ious):.4f} "
                 f"(min {np.min(ious):.4f}); pixels equal: "
                 f"{np.mean([np.mean(x == y) for x, y in zip(b.labels, p.labels)]) * 100:.3f} %")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import platform

    import onnxruntime
    import torch

    workdir = Path(args.workdir)
    frames, labels, source = load_clip(args.davis, args.sequence, args.frames + 1, args.workdir, args.synthetic)
    chunk = args.dense_chunk or None
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    print(f"frames: {source}; {args.frames} timed frames after the first; memory N={args.memory} "
          f"(prefilled: {args.memory + 1} context frames per step); noise: {args.noise}; "
          f"baseline dense chunk: {chunk or 'whole matrix'}")
    for name in args.configs:
        case = make_case(name, args.fixtures)
        print(f"\n== {case.label}", flush=True)
        t0 = time.perf_counter()
        res = run_case(case, frames, labels, workdir=workdir, memory=args.memory, noise=args.noise,
                       seed=args.seed, dense_chunk=chunk, threads=args.threads)
        print(f"  ({time.perf_counter() - t0:.0f} s including setup)\n")
        print(format_results(case, res, f"{len(frames) - 1} frames, N={args.memory}, noise {args.noise}"))
    print(f"\nprocess peak RSS (VmHWM since last reset): {peak_mib():.0f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    from diffvos.evaluation.benchmarks import add_pipeline_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipeline_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
