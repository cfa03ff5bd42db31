"""What to install for each missing GPU piece, per kind of machine: the README's install matrix
in code, so an error message, ``diffvos doctor`` and the README say the same thing.

Kinds: ``x86_64-linux`` (CUDA 12 or 13 servers, PyPI's onnxruntime-gpu), ``jetson`` (JetPack:
TensorRT from apt, ONNX Runtime GPU from the Jetson builds, never PyPI's CPU onnxruntime),
``arm-linux`` (other ARM Linux: CPU), ``other`` (macOS, Windows: CPU).
"""

from __future__ import annotations

import platform
from pathlib import Path

NVIDIA_INDEX = "--extra-index-url https://pypi.nvidia.com"  # where tensorrt-cuXX-libs really live

HINTS: dict[str, dict[str, str]] = {
    "driver": {
        "jetson": "flash or update JetPack (the GPU driver is part of L4T)",
        "*": "install the NVIDIA driver; `nvidia-smi` must list the GPU (a CUDA 12 build needs driver >= 525, "
             "CUDA 13 needs >= 580)",
    },
    "onnxruntime-gpu": {
        "x86_64-linux": "pip install 'diffvos[cuda12]' on a CUDA 12 driver (onnxruntime-gpu < 1.27) or "
                        "'diffvos[cuda13]' on a CUDA 13 driver (onnxruntime-gpu >= 1.27)",
        "jetson": "install the Jetson build of onnxruntime-gpu for your JetPack (Jetson AI Lab / Jetson Zoo "
                  "index); never PyPI's onnxruntime, which shadows it",
        "*": "ONNX Runtime's CUDA build is published for x86_64 Linux (and Windows); this machine runs on the CPU",
    },
    "onnxruntime": {
        "arm-linux": "pip install 'diffvos[cpu]'",
        "jetson": "install the Jetson build of onnxruntime-gpu for your JetPack (see onnxruntime-gpu)",
        "*": "pip install diffvos (it requires ONNX Runtime)",
    },
    "cuda-python": {
        "jetson": "pip install 'diffvos[jetson]' (cuda-python 12.x)",
        "*": "pip install 'cuda-python>=12.6,<13' on a CUDA 12 driver or 'cuda-python>=13,<14' on CUDA 13 "
             "(the diffvos[cuda12] / [cuda13] extras include it)",
    },
    "tensorrt": {
        "x86_64-linux": f"pip install {NVIDIA_INDEX} 'diffvos[trt-cu12]' (CUDA 12) or 'diffvos[trt-cu13]' "
                        "(CUDA 13)",
        "jetson": "sudo apt install python3-libnvinfer (part of nvidia-jetpack) and use a venv made with "
                  "`python3 -m venv --system-site-packages`",
        "*": "TensorRT is published for x86_64 Linux, Windows and Jetson; use --backend cuda or cpu here",
    },
    "libnvinfer": {
        "x86_64-linux": f"ONNX Runtime's TensorRT EP needs libnvinfer.so.10 on the library path: pip install "
                        f"{NVIDIA_INDEX} 'tensorrt-cu12-libs<11' (or -cu13), or NVIDIA's TensorRT 10 packages",
        "jetson": "sudo apt install libnvinfer10 (part of nvidia-jetpack)",
        "*": "TensorRT 10 libraries are needed by ONNX Runtime's TensorRT EP",
    },
}


def is_jetson(root: Path = Path("/")) -> bool:
    """A Jetson board (L4T): its release file, or the device tree's model name."""
    if (root / "etc" / "nv_tegra_release").exists():
        return True
    try:
        return "jetson" in (root / "proc" / "device-tree" / "model").read_bytes().decode(errors="ignore").lower()
    except OSError:
        return False


def machine_kind(system: str | None = None, machine: str | None = None, jetson: bool | None = None) -> str:
    system = (system or platform.system()).lower()
    machine = (machine or platform.machine()).lower()
    if system != "linux":
        return "other"
    if machine in ("x86_64", "amd64"):
        return "x86_64-linux"
    if jetson if jetson is not None else is_jetson():
        return "jetson"
    return "arm-linux"


def install_hint(piece: str, kind: str | None = None) -> str:
    """How to get ``piece`` (one of :data:`HINTS`) on this kind of machine."""
    options = HINTS[piece]
    return options.get(kind or machine_kind()) or options["*"]
