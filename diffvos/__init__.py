"""diffvos: zero-shot video object tracking with diffusion-model features.

Subpackages: ``diffvos.export`` (torch side: checkpoints to ONNX bundles),
``diffvos.calibration`` (INT8), ``diffvos.runtime`` (torch-free tracking) and
``diffvos.evaluation`` (DAVIS scoring).
"""

__version__ = "0.1.0"
