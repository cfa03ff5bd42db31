"""The bundle contract: manifest schema, size rule, noise schedules and output comparison.

Export and calibration write bundles, the runtime reads them; they meet only here.
"""

from diffvos.bundle.manifest import (
    AFFINITY_KINDS,
    DDIM,
    FEATURES_GRAPH,
    MANIFEST_NAME,
    NOISE_GRAPH,
    SCHEMA_VERSION,
    VAE_GRAPH,
    Affinity,
    Calibration,
    Checkpoint,
    Comparison,
    CpuSpeed,
    ExportFacts,
    Flops,
    Fp16Conversion,
    GraphEntry,
    GraphFacts,
    Latent,
    Manifest,
    MaskCheck,
    PrecisionSearch,
    Preprocess,
    SearchStep,
    StreamBatch,
    TensorRTPlan,
    read_manifest,
    sha256_file,
    write_manifest,
)

__all__ = [
    "AFFINITY_KINDS", "DDIM", "NOISE_GRAPH", "Affinity",
    "FEATURES_GRAPH", "MANIFEST_NAME", "SCHEMA_VERSION", "VAE_GRAPH", "Calibration", "Checkpoint", "Comparison",
    "CpuSpeed", "MaskCheck", "PrecisionSearch", "SearchStep",
    "ExportFacts", "Flops", "Fp16Conversion", "GraphEntry", "GraphFacts", "Latent", "Manifest", "Preprocess",
    "StreamBatch", "TensorRTPlan", "read_manifest", "sha256_file", "write_manifest",
]
