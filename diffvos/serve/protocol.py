"""The tracker model's wire protocol, defined once for the repository, the model and the client.

One Triton *sequence* is one video stream: the client names it with ``sequence_id`` (an integer
or a string), sends its first frame with ``sequence_start`` and the first mask, then one request
per frame; ``sequence_end`` on the last request (with or without a frame) frees the stream.

Inputs (each request carries one item: a leading batch dimension of 1):

* ``FRAME`` uint8 [H, W, 3], BGR (optional only on a request that just ends or removes);
* ``MASK`` uint8 [H, W], optional: objects to add on this frame (the first frame's mask, or an
  object appearing mid-video), as in ``Session.step(frame, mask=...)``;
* ``OBJECT_IDS`` int32 [K], optional: which ids of ``MASK`` to add (default: every id not tracked);
* ``REMOVE`` int32 [K], optional: object ids to stop tracking, before this request's frame.

Outputs: ``LABELS`` uint8 [H, W] (the label map; 0 x 0 for a request without a frame),
``OBJECTS`` int32 [K] (ids tracked after the request), ``FRAME_INDEX`` int64 [1] (frames
stepped in the stream so far).
"""

from __future__ import annotations

MODEL_NAME = "diffvos_tracker"

FRAME = "FRAME"
MASK = "MASK"
OBJECT_IDS = "OBJECT_IDS"
REMOVE = "REMOVE"
LABELS = "LABELS"
OBJECTS = "OBJECTS"
FRAME_INDEX = "FRAME_INDEX"

INPUTS = {  # name -> (Triton type, dims without the batch dimension)
    FRAME: ("UINT8", (-1, -1, 3)),
    MASK: ("UINT8", (-1, -1)),
    OBJECT_IDS: ("INT32", (-1,)),
    REMOVE: ("INT32", (-1,)),
}
OUTPUTS = {
    LABELS: ("UINT8", (-1, -1)),
    OBJECTS: ("INT32", (-1,)),
    FRAME_INDEX: ("INT64", (1,)),
}

# Triton sequence-batcher control inputs (names inside the model; clients use the sequence flags)
START, END, READY = "START", "END", "READY"

# model parameters in config.pbtxt (string values)
P_BUNDLE = "bundle"  # bundle directory: absolute, or relative to the model's version directory
P_MAX_STREAMS = "max_streams"
P_MAX_PIXELS = "max_pixels"
P_BACKEND = "backend"
P_THREADS = "threads"
P_SESSION = "session"  # JSON of Session options (memory, topk, ..., seed)
P_ENV = "EXECUTION_ENV_PATH"  # Triton's own: the Python environment the stub runs in

# per-request error kinds -> Triton error codes (HTTP status / gRPC code)
INVALID, NOT_FOUND, UNAVAILABLE, INTERNAL = "invalid", "not_found", "unavailable", "internal"
