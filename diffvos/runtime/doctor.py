"""``diffvos doctor``: what this machine can run, what it cannot, and what to install about it.

Reads the platform, the GPU and driver (cuda-python when installed, ``nvidia-smi`` when present),
the ONNX Runtime build and which of its providers *really start* (a tiny graph is loaded through
the same :class:`~diffvos.runtime.ort_engine.OrtLoader` tracking uses, and run once, so a provider
that fails at its first run is caught too), TensorRT's Python package and libnvinfer, and, with
``--bundle``, whether the bundle's TensorRT plans fit this machine. Each missing piece comes with
the install line for this kind of machine (:mod:`diffvos.runtime.install_hints`). Every check is
guarded: a machine missing pieces gets a report, never a traceback. Heavy modules are imported
inside the checks.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from diffvos.runtime.install_hints import install_hint, is_jetson, machine_kind

if TYPE_CHECKING:
    from diffvos.cli import Subcommands

# Relu on float32 [1, 4], IR 8 / opset 13 (any ONNX Runtime >= 1.10 loads it); what each provider must start with
TINY_MODEL = (b'\x08\x08\x12\x07diffvos:@\n\x0c\n\x01x\x12\x01y"\x04Relu\x12\x06doctorZ\x13\n\x01x\x12\x0e\n\x0c\x08'
              b'\x01\x12\x08\n\x02\x08\x01\n\x02\x08\x04b\x13\n\x01y\x12\x0e\n\x0c\x08\x01\x12\x08\n\x02\x08\x01\n'
              b'\x02\x08\x04B\x04\n\x00\x10\r')


@dataclass
class Check:
    section: str
    name: str
    ok: bool | None  # True: works; False: missing or broken; None: information
    detail: str
    fix: str | None = None


@dataclass
class Probes:
    """Where the checks get their facts (tests inject their own)."""

    ort: Any = None  # onnxruntime module; None: import it
    trt: Any = None  # tensorrt module; None: import it
    cuda: Any = None  # diffvos.runtime.cuda_device.Cuda; None: build one over cuda-python
    which: Callable[[str], str | None] = shutil.which
    run: Callable[..., Any] = subprocess.run
    nvinfer: Callable[[], str | None] | None = None  # libnvinfer version probe; None: caches.libnvinfer_version


def _guarded(section: str, fn: Callable[[], list[Check]]) -> list[Check]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it never crashes
        return [Check(section, "check", False, f"the check itself failed: {type(exc).__name__}: {exc}")]


def check_platform() -> list[Check]:
    kind = machine_kind()
    out = [Check("platform", "system", None, f"{platform.platform()}, Python {platform.python_version()}, "
                 f"{platform.machine()} ({kind})")]
    if kind == "jetson" or is_jetson():
        release = Path("/etc/nv_tegra_release")
        text = release.read_text(errors="ignore").splitlines()[0] if release.is_file() else "L4T release unknown"
        out.append(Check("platform", "jetson", None, text.strip("# ")))
    return out


def check_nvidia_smi(probes: Probes) -> list[Check]:
    exe = probes.which("nvidia-smi")
    if not exe:
        return [Check("gpu", "nvidia-smi", None, "not found (normal on Jetson; elsewhere it comes with the driver)")]
    try:
        res = probes.run([exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return [Check("gpu", "nvidia-smi", False, f"did not run: {exc}", install_hint("driver"))]
    lines = [ln.strip() for ln in (res.stdout or "").splitlines() if ln.strip()]
    if res.returncode != 0 or not lines:
        said = (res.stderr or res.stdout or "").strip().splitlines()
        return [Check("gpu", "nvidia-smi", False, f"failed: {said[0] if said else f'exit {res.returncode}'}",
                      install_hint("driver"))]
    return [Check("gpu", f"GPU {i} (nvidia-smi)", True, ln) for i, ln in enumerate(lines)]


def check_cuda_python(probes: Probes, facts: dict[str, Any]) -> list[Check]:
    from diffvos.runtime.cuda_device import (
        Cuda,
        CudaError,
        cuda_python_version,
        gpu_summary,
    )

    try:
        cuda = probes.cuda or Cuda()
    except CudaError as exc:
        return [Check("gpu", "cuda-python", False, str(exc), install_hint("cuda-python"))]
    version = cuda_python_version() if probes.cuda is None else "injected"
    summary = gpu_summary(cuda)
    facts["devices"], facts["driver_cuda"] = summary["devices"], summary.get("driver")
    driver = f"the driver supports CUDA {summary['driver']}" if summary.get("driver") else "no NVIDIA driver"
    out = [Check("gpu", "cuda-python", True, f"{version}: CUDA runtime {summary.get('runtime', '?')}, {driver}")]
    if summary.get("error"):
        out.append(Check("gpu", "CUDA device", False, summary["error"], install_hint("driver")))
    for i, dev in enumerate(summary["devices"]):
        out.append(Check("gpu", f"CUDA device {i}", True, f"{dev['gpu']}, compute capability "
                         f"{dev['compute_capability']}, {dev['total_memory'] / 2**30:.1f} GiB"))
    return out


def check_onnxruntime(probes: Probes, start: bool, facts: dict[str, Any]) -> list[Check]:
    from importlib import metadata

    ort = probes.ort
    if ort is None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return [Check("onnxruntime", "onnxruntime", False, f"not importable ({exc})", install_hint("onnxruntime"))]
    dists = []
    for d in ("onnxruntime", "onnxruntime-gpu"):
        try:
            dists.append(f"{d} {metadata.version(d)}")
        except metadata.PackageNotFoundError:
            pass
    cuda_build = getattr(getattr(getattr(ort, "capi", None), "build_and_package_info", None), "cuda_version", None)
    facts["ort_cuda"] = cuda_build
    packages = ", ".join(dists) or "no distribution metadata"
    built = f", built for CUDA {cuda_build}" if cuda_build else ""
    out = [Check("onnxruntime", "onnxruntime", True, f"{getattr(ort, '__version__', '?')} ({packages}{built})")]
    if len(dists) > 1:
        out.append(Check("onnxruntime", "packages", False, "onnxruntime and onnxruntime-gpu are both installed: they "
                         "overwrite each other's files", "pip uninstall -y onnxruntime onnxruntime-gpu, then install "
                         "one: " + install_hint("onnxruntime-gpu")))
    if machine_kind() == "jetson" and any(d.startswith("onnxruntime ") for d in dists):
        out.append(Check("onnxruntime", "packages", False, "PyPI's CPU onnxruntime is installed on a Jetson",
                         install_hint("onnxruntime-gpu", "jetson")))
    driver = facts.get("driver_cuda")
    if cuda_build and driver and int(cuda_build.split(".")[0]) > int(driver.split(".")[0]):
        out.append(Check("onnxruntime", "CUDA major", False, f"onnxruntime-gpu is built for CUDA {cuda_build}, the "
                         f"driver supports CUDA {driver}: its CUDA provider cannot start",
                         install_hint("onnxruntime-gpu")))
    available = list(ort.get_available_providers())
    out.append(Check("onnxruntime", "providers listed", None, ", ".join(available)))
    if start:
        out += start_providers(ort, available, probes)
    return out


def start_providers(ort: Any, available: list[str], probes: Probes) -> list[Check]:
    """Load and run the tiny graph on each listed provider, through the loader tracking uses."""
    import numpy as np

    from diffvos.config import ORT_PROVIDERS
    from diffvos.runtime.ort_engine import OrtLoader
    from diffvos.runtime.ort_options import GpuOptions

    out = []
    with tempfile.TemporaryDirectory(prefix="diffvos-doctor-") as tmp:
        model = Path(tmp) / "tiny.onnx"
        model.write_bytes(TINY_MODEL)
        for backend, provider in ORT_PROVIDERS.items():
            if provider not in available:
                continue
            name = f"{backend} ({provider})"
            try:
                kw = {"nvinfer": probes.nvinfer} if probes.nvinfer else {}
                engine = OrtLoader(model, backend=backend, gpu=GpuOptions(input_name="x", cache=False), ort=ort,
                                   cuda=probes.cuda, **kw)()
                y = engine.infer({"x": np.array([[-1, 0, 1, 2]], np.float32)})["y"]
            except Exception as exc:  # noqa: BLE001
                out.append(Check("onnxruntime", name, False, f"does not start: {exc}", _provider_fix(backend)))
                continue
            if engine.provider != provider:  # the note names the cause ONNX Runtime printed
                out.append(Check("onnxruntime", name, False, engine.note or f"runs on {engine.provider}",
                                 _provider_fix(backend)))
            elif not np.array_equal(y, [[0, 0, 1, 2]]):
                out.append(Check("onnxruntime", name, False, f"starts but computes Relu wrongly: {y.tolist()}"))
            else:
                out.append(Check("onnxruntime", name, True, "starts and runs"))
    return out


def _provider_fix(backend: str) -> str | None:
    if backend == "tensorrt":
        return install_hint("libnvinfer")
    if backend == "cuda":
        return install_hint("onnxruntime-gpu") + "; " + install_hint("driver")
    return None


def check_tensorrt(probes: Probes) -> tuple[list[Check], str | None]:
    from diffvos.errors import BackendError
    from diffvos.runtime.caches import libnvinfer_version
    from diffvos.runtime.trt_api import create, import_trt, make_logger

    nvinfer = (probes.nvinfer or libnvinfer_version)()
    out = [Check("tensorrt", "libnvinfer (ONNX Runtime's TensorRT EP)", bool(nvinfer),
                 nvinfer or "not found on the library path", None if nvinfer else install_hint("libnvinfer"))]
    try:
        trt = probes.trt or import_trt()
    except BackendError:
        out.append(Check("tensorrt", "tensorrt (native backend, build-engine)", False, "not importable",
                         install_hint("tensorrt")))
        return out, None
    version = str(trt.__version__)
    try:
        create(trt, "Runtime", make_logger(trt, echo=""))
    except BackendError as exc:
        out.append(Check("tensorrt", "tensorrt (native backend, build-engine)", False,
                         f"{version} imports, but {exc}", install_hint("driver")))
        return out, version
    out.append(Check("tensorrt", "tensorrt (native backend, build-engine)", True, f"{version}: creates its runtime"))
    return out, version


def check_bundle(bundle: str, trt_version: str | None, devices: list[dict[str, Any]]) -> list[Check]:
    from diffvos.bundle import read_manifest, sha256_file
    from diffvos.errors import DiffvosError
    from diffvos.runtime.backends import gpu_options
    from diffvos.runtime.trt_engine import check_plan_facts

    try:
        m = read_manifest(bundle, verify_files=False)
    except DiffvosError as exc:
        return [Check("bundle", bundle, False, str(exc))]
    size = f"{m.height}x{m.width}" if not m.dynamic else f"dynamic {m.min_size} .. {m.max_size}"
    out = [Check("bundle", "bundle", None, f"{bundle}: {m.backbone}, {m.precision}, input {size}, graphs "
                 f"{', '.join(m.graphs)}")]
    for graph in m.graphs:
        gpu = gpu_options(m, graph)
        if gpu.profile:
            lo, opt, hi = gpu.profile
            out.append(Check("bundle", f"{graph}: TensorRT EP profile", None, f"{list(lo)} .. {list(hi)}, optimised "
                             f"for {list(opt)}"))
        plan = m.tensorrt.get(graph)
        name = f"{graph}: plan for --backend trt"
        fix = f"diffvos build-engine --bundle {bundle}"
        if plan is None:
            out.append(Check("bundle", name, False, "none built", fix + " (on this machine)"))
            continue
        path = Path(bundle) / plan.plan
        if not path.is_file() or (plan.sha256 and sha256_file(path) != plan.sha256):
            out.append(Check("bundle", name, False, f"{plan.plan} is missing or corrupted", fix))
            continue
        made = f"TensorRT {plan.trt_version}, {plan.gpu} (compute capability {plan.compute_capability})"
        if trt_version is None or not devices:
            out.append(Check("bundle", name, None, f"built with {made}; cannot compare: "
                             f"{'no TensorRT' if trt_version is None else 'no CUDA device visible'} here"))
            continue
        try:
            check_plan_facts(plan, trt_version, devices[0], bundle, graph)
        except DiffvosError as exc:
            out.append(Check("bundle", name, False, str(exc).split(": ", 1)[-1], fix))
            continue
        out.append(Check("bundle", name, True, f"fits this machine ({made})"))
    return out


def run_checks(bundle: str | None = None, start: bool = True, probes: Probes | None = None) -> list[Check]:
    probes = probes or Probes()
    facts: dict[str, Any] = {"devices": []}  # what one check learns and a later one compares

    def tensorrt() -> list[Check]:
        found, facts["trt_version"] = check_tensorrt(probes)
        return found

    checks = _guarded("platform", check_platform)
    checks += _guarded("gpu", lambda: check_nvidia_smi(probes))
    checks += _guarded("gpu", lambda: check_cuda_python(probes, facts))
    checks += _guarded("onnxruntime", lambda: check_onnxruntime(probes, start, facts))
    checks += _guarded("tensorrt", tensorrt)
    if bundle:
        checks += _guarded("bundle", lambda: check_bundle(bundle, facts.get("trt_version"), facts["devices"]))
    return checks


def format_report(checks: list[Check]) -> str:
    mark = {True: "ok  ", False: "MISS", None: "    "}
    lines, section = [], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append(f"  {mark[c.ok]} {c.name}: {c.detail}")
    fixes: dict[str, list[str]] = {}
    for c in checks:
        if c.ok is False and c.fix:
            fixes.setdefault(c.fix, []).append(c.name)
    if fixes:
        lines.append("to fix:")
        lines += [f"  - {', '.join(names)}: {fix}" for fix, names in fixes.items()]
    else:
        lines.append("nothing missing for what this machine offers")
    return "\n".join(lines)


def register(sub: Subcommands) -> None:
    p = sub.add_parser("doctor", help="what this machine can run (GPU, driver, ONNX Runtime providers, TensorRT) "
                       "and what to install")
    p.add_argument("--bundle", help="also check this bundle's TensorRT plans against the machine")
    p.add_argument("--no-start", action="store_true", help="list providers without starting them (faster)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args.bundle, start=not args.no_start)
    print(json.dumps([asdict(c) for c in checks], indent=1) if args.json else format_report(checks))
    sys.stdout.flush()
    return 0
