"""Torch-free runtime: bundles, sessions, noise injection, propagation, memory, video I/O."""
