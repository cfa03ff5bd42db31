"""One I/O layer for frames, masks, overlays and atomic outputs, shared by tracking, calibration,
evaluation and the benchmarks (torch-free)."""
