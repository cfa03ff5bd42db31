"""Torch-free runtime: ``Runtime`` and ``Session.step`` (session.py), the engine interface
(ONNX Runtime, native TensorRT), features, propagation and memory, ``diffvos track`` and the C ABI."""
