"""Torch side: load diffusion checkpoints, truncate the U-Net at a decoder layer, export ONNX bundles."""
