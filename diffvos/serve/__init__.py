"""Serving on Triton Inference Server: a model repository for the stock ``tritonserver`` (the
binary shipped in the ``nvidia-pytriton`` wheel) with a stateful tracker in Triton's Python
backend, the launcher behind ``diffvos serve``, and a small client.

* :mod:`diffvos.serve.protocol`: the wire names (inputs, outputs, parameters), defined once.
* :mod:`diffvos.serve.streams`: the stream table (one session per Triton sequence, bounds, idle
  eviction, batched stepping); plain Python, testable without Triton.
* :mod:`diffvos.serve.triton_model`: the Python-backend adapter (``TritonPythonModel``).
* :mod:`diffvos.serve.repository`: ``diffvos export-triton`` (config.pbtxt + model.py).
* :mod:`diffvos.serve.server`: finding, configuring, starting and stopping ``tritonserver``.
* :mod:`diffvos.serve.client`: ``TrackerClient`` over tritonclient (HTTP or gRPC).
"""
