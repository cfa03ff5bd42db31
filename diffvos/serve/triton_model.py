"""Triton Python-backend model: the stateful tracker (``TritonPythonModel``).

Loaded by Triton's Python-backend stub from the repository's ``model.py``; it decodes requests
(sequence id and START/END flags from Triton's sequence batcher, tensors per
:mod:`diffvos.serve.protocol`), hands one batch to :class:`~diffvos.serve.streams.StreamTable`
and answers every request with its outputs or its own error (``TritonError`` with a code: 400
invalid, 404 not found, 503 unavailable over HTTP; the gRPC equivalents).

Tensors cross the stub through DLPack (``np.from_dlpack`` in, ``Tensor.from_dlpack`` out): the
stub in the nvidia-pytriton wheel was built for numpy 1.x, and with numpy 2 its numpy
conversion of *outputs* (``pb_utils.Tensor(name, array)``) sends 0 bytes, while DLPack works with
both (measured; see README "Serving and scale-out"). With numpy 2 the stub makes numpy's DLPack
capsule destructor report a harmless "PyCapsule_GetPointer called with incorrect name" for each
output (apparently the stub does not mark the capsule as consumed the way numpy 2 expects; the data
arrives intact and the stub's memory stays flat over 2,000 requests); that one message is filtered.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the stub

from diffvos.config import SessionConfig
from diffvos.serve import protocol as P
from diffvos.serve.streams import RequestError, StreamTable, TrackReply, TrackRequest

_CAPSULE_NOISE = "PyCapsule_GetPointer called with incorrect name"


def _quiet_capsule_hook(default):
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, ValueError) and _CAPSULE_NOISE in str(unraisable.exc_value):
            return
        default(unraisable)

    return hook


if int(np.__version__.split(".")[0]) >= 2:
    sys.unraisablehook = _quiet_capsule_hook(sys.unraisablehook)


def _codes() -> dict[str, Any]:
    e = pb_utils.TritonError
    return {P.INVALID: e.INVALID_ARG, P.NOT_FOUND: e.NOT_FOUND, P.UNAVAILABLE: e.UNAVAILABLE, P.INTERNAL: e.INTERNAL}


def _input(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


def _output(name: str, array: np.ndarray) -> Any:
    if array.size == 0:  # the stub refuses empty DLPack tensors; its numpy path sends 0 bytes, right here
        return pb_utils.Tensor(name, array)
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _flag(request: Any, name: str) -> bool:
    value = _input(request, name)
    return bool(value is not None and value.size and value.reshape(-1)[0])


def decode(request: Any) -> TrackRequest:
    """A Triton request as a TrackRequest (each input has a batch dimension of 1)."""
    def item(name: str) -> np.ndarray | None:
        value = _input(request, name)
        if value is None:
            return None
        if value.shape[:1] != (1,):
            raise RequestError(P.INVALID, f"{name} must carry one item (batch dimension 1), got {list(value.shape)}")
        return value[0]

    ids = item(P.OBJECT_IDS)
    remove = item(P.REMOVE)
    return TrackRequest(
        stream=str(request.correlation_id()), start=_flag(request, P.START), end=_flag(request, P.END),
        frame=item(P.FRAME), mask=item(P.MASK), object_ids=None if ids is None else [int(v) for v in ids],
        remove=[] if remove is None else [int(v) for v in remove],
    )


def _bundle_path(value: str, args: dict[str, Any]) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = Path(args["model_repository"]) / str(args["model_version"]) / path
    return path


class TritonPythonModel:
    """The stateful tracker: one Runtime per model instance, one Session per stream."""

    def initialize(self, args: dict[str, Any]) -> None:
        from diffvos.runtime.session import Runtime

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        idle_s = config["sequence_batching"]["max_sequence_idle_microseconds"] / 1e6
        self.runtime = Runtime(_bundle_path(params[P.P_BUNDLE], args), backend=params.get(P.P_BACKEND, "auto"),
                               threads=int(params.get(P.P_THREADS, "0")))
        for note in self.runtime.notes:
            pb_utils.Logger.log_info(note)
        session = SessionConfig.from_options(**json.loads(params.get(P.P_SESSION) or "{}"))
        self.table = StreamTable(self.runtime, max_streams=int(params[P.P_MAX_STREAMS]), idle_timeout_s=idle_s,
                                 max_pixels=int(params[P.P_MAX_PIXELS]), config=session)
        self.codes = _codes()
        self.stop = threading.Event()
        self.evictor = threading.Thread(target=self._evict_loop, args=(max(idle_s / 2, 0.2),), daemon=True)
        self.evictor.start()
        pb_utils.Logger.log_info(
            f"diffvos tracker: bundle {self.runtime.bundle} on {self.runtime.provider}, up to "
            f"{self.table.max_streams} streams, {self.runtime.manifest.streams.max_streams} per feature-graph call, "
            f"idle timeout {idle_s:g} s, numpy {np.__version__}, python {sys.version.split()[0]}, pid {os.getpid()}")

    def _evict_loop(self, every_s: float) -> None:
        while not self.stop.wait(every_s):
            n = self.table.evict_idle()
            if n:
                pb_utils.Logger.log_info(f"diffvos tracker: closed {n} idle stream(s)")

    def execute(self, requests: list[Any]) -> list[Any]:
        decoded: list[TrackRequest | RequestError] = []
        for request in requests:
            try:
                decoded.append(decode(request))
            except RequestError as exc:
                decoded.append(exc)
            except Exception as exc:  # noqa: BLE001 - a request the model cannot read is that request's error
                decoded.append(RequestError(P.INVALID, f"unreadable request: {type(exc).__name__}: {exc}"))
        valid = [d for d in decoded if isinstance(d, TrackRequest)]
        replies = iter(self.table.handle(valid))
        return [self._response(d if isinstance(d, RequestError) else next(replies)) for d in decoded]

    def _response(self, reply: TrackReply | RequestError) -> Any:
        if isinstance(reply, RequestError):
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(reply),
                                                                                           self.codes[reply.kind]))
        return pb_utils.InferenceResponse(output_tensors=[
            _output(P.LABELS, reply.labels[None]),
            _output(P.OBJECTS, reply.objects[None]),
            _output(P.FRAME_INDEX, np.array([[reply.frames]], np.int64)),
        ])

    def finalize(self) -> None:
        self.stop.set()
        self.table.close()
        self.runtime.close()
