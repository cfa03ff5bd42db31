"""A client for the tracker model over tritonclient (HTTP or gRPC): one stream per
:class:`StreamClient`, one call per frame. Errors come back as tritonclient's
``InferenceServerException`` (``.status()`` is '400'/'404'/'503' over HTTP, 'StatusCode.…' over
gRPC; ``.message()`` the model's text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from diffvos.serve import protocol as P

_NUMPY_TO_TRITON = {np.dtype(np.uint8): "UINT8", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
                    np.dtype(np.float32): "FP32"}


def connect(url: str, protocol: str = "grpc") -> tuple[Any, Any]:
    """(tritonclient module, InferenceServerClient) for ``url`` ('127.0.0.1:8001')."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    elif protocol == "http":
        import tritonclient.http as tc
    else:
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    return tc, tc.InferenceServerClient(url)


@dataclass
class Result:
    labels: np.ndarray  # uint8 HxW (0x0 for a request without a frame)
    objects: list[int]
    frames: int


class StreamClient:
    """One stream (Triton sequence ``stream_id``) of the tracker model."""

    def __init__(self, url: str, stream_id: int | str, protocol: str = "grpc", model: str = P.MODEL_NAME,
                 client: Any = None) -> None:
        self.tc, self.client = connect(url, protocol) if client is None else (_module_of(client), client)
        self.stream_id, self.model = stream_id, model
        self.started = False

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array)[None]
        t = self.tc.InferInput(name, list(array.shape), _NUMPY_TO_TRITON[array.dtype])
        t.set_data_from_numpy(array)
        return t

    def step(self, frame: np.ndarray | None, mask: np.ndarray | None = None, object_ids: Sequence[int] | None = None,
             remove: Sequence[int] = (), start: bool | None = None, end: bool = False) -> Result:
        """Send one frame (BGR uint8 HxWx3); the first call starts the stream (give its mask)."""
        start = not self.started if start is None else start
        inputs = []
        if frame is not None:
            inputs.append(self._tensor(P.FRAME, frame))
        if mask is not None:
            inputs.append(self._tensor(P.MASK, mask))
        if object_ids is not None:
            inputs.append(self._tensor(P.OBJECT_IDS, np.asarray(object_ids, np.int32)))
        if remove:
            inputs.append(self._tensor(P.REMOVE, np.asarray(remove, np.int32)))
        outputs = [self.tc.InferRequestedOutput(n) for n in P.OUTPUTS]
        r = self.client.infer(self.model, inputs, outputs=outputs, sequence_id=self.stream_id,
                              sequence_start=start, sequence_end=end)
        self.started = not end
        return Result(r.as_numpy(P.LABELS)[0], [int(v) for v in r.as_numpy(P.OBJECTS)[0]],
                      int(r.as_numpy(P.FRAME_INDEX)[0, 0]))

    def end(self) -> Result:
        """End the stream without a frame (frees it on the server)."""
        return self.step(None, end=True, start=False)


def _module_of(client: Any) -> Any:
    import importlib

    return importlib.import_module(type(client).__module__.rsplit(".", 1)[0])
