"""The host <-> device boundary of the device-resident step: one place that moves data, and counts it.

ONNX Runtime places tensors on a device named by a type and an id (``"cpu"``, ``"cuda"`` 0). The
device step keeps everything per frame on that device (the feature map, the memory bank, the soft
mask) and crosses to the host only through :class:`DeviceIO`, which counts every byte it moves
each way. On a GPU these are the real copies; on the CPU execution provider the "device" is host
memory and nothing is copied, but the count is the same, so CI checks the claim the design makes
(steady state: the uint8 frame up, the uint8 label map down) on the very code a GPU runs.

Tensors are ONNX Runtime ``OrtValue`` objects allocated on the device; :class:`DeviceTensor` is a
view of one (a row of a batch, a slot of the bank) by address, shape and element type, which is
how IO binding takes buffers (``IOBinding.bind_input(name, device, id, dtype, shape, address)``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffvos.runtime.ort_engine import ORT_TYPES


@dataclass(frozen=True, eq=False)
class DeviceTensor:
    """A device buffer seen as one tensor: ``value`` (the ``OrtValue`` that owns the memory, kept
    alive by this view), byte ``offset`` into it, ``shape`` and ``dtype``."""

    io: DeviceIO
    value: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int = 0

    @property
    def address(self) -> int:
        return int(self.value.data_ptr()) + self.offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, index: int) -> DeviceTensor:
        """Row ``index`` of the leading axis (a view, no copy)."""
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.shape[0]:
            raise IndexError(f"row {index!r} of a device tensor of shape {self.shape}")
        return self.rows(int(index), int(index) + 1).reshape(*self.shape[1:])

    def rows(self, start: int, stop: int) -> DeviceTensor:
        """Rows ``start:stop`` of the leading axis (a view, no copy)."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise IndexError(f"rows {start}:{stop} of a device tensor of shape {self.shape}")
        row = self.nbytes // self.shape[0]
        return DeviceTensor(self.io, self.value, (stop - start, *self.shape[1:]), self.dtype, self.offset + start * row)

    def reshape(self, *shape: int) -> DeviceTensor:
        if int(np.prod(shape)) != int(np.prod(self.shape)):
            raise ValueError(f"cannot view {self.shape} as {shape}")
        return DeviceTensor(self.io, self.value, tuple(shape), self.dtype, self.offset)

    def numpy(self) -> np.ndarray:
        """A host copy (counted as moved down)."""
        return self.io.download(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)


class DeviceIO:
    """One device (``device``, ``device_id``) and the bytes moved between it and the host.

    ``up`` / ``down``: bytes host -> device and device -> host so far (reset with
    :meth:`reset_counts`). ``copier(dtype)`` returns an engine whose graph is ``Identity``
    (:func:`diffvos.runtime.onnx_build.copy_model`), used for device-to-device and host-to-slot
    copies by address; the runtime's graph cache provides it.
    """

    def __init__(self, device: str = "cpu", device_id: int = 0, copier: Any = None, ort: Any = None) -> None:
        if ort is None:
            import onnxruntime as ort
        self.ort = ort
        self.device, self.device_id = device, device_id
        self.copier = copier
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()

    def reset_counts(self) -> None:
        self.up = self.down = 0

    def _count(self, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self.up += up
            self.down += down

    # -- tensors -------------------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: Any) -> DeviceTensor:
        """An uninitialised device tensor."""
        dtype = np.dtype(dtype)
        value = self.ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, self.device, self.device_id)
        return DeviceTensor(self, value, tuple(int(s) for s in shape), dtype)

    def upload(self, array: np.ndarray) -> DeviceTensor:
        """A device copy of a host array (counted)."""
        array = np.ascontiguousarray(array)
        tensor = self.empty(array.shape, array.dtype)
        self.write(tensor, array)
        return tensor

    def write(self, tensor: DeviceTensor, array: np.ndarray) -> None:
        """Copy a host array into a device tensor or view (counted)."""
        array = np.ascontiguousarray(array, dtype=tensor.dtype)
        if array.shape != tensor.shape:
            raise ValueError(f"writing {array.shape} into a device tensor of shape {tensor.shape}")
        engine = self.copier(tensor.dtype)
        binding = engine.io_binding()
        binding.bind_cpu_input("x", array)
        self.bind(binding, "y", tensor, output=True)
        engine.run_binding(binding)
        self._count(up=array.nbytes)

    def copy(self, dst: DeviceTensor, src: DeviceTensor) -> None:
        """Device-to-device copy between views of equal shape (nothing crosses to the host)."""
        if dst.shape != src.shape or dst.dtype != src.dtype:
            raise ValueError(f"copying {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
        engine = self.copier(dst.dtype)
        binding = engine.io_binding()
        self.bind(binding, "x", src)
        self.bind(binding, "y", dst, output=True)
        engine.run_binding(binding)

    def download(self, tensor: DeviceTensor) -> np.ndarray:
        """A host copy of a device tensor or view (counted)."""
        out = np.empty(tensor.shape, tensor.dtype)
        engine = self.copier(tensor.dtype)
        binding = engine.io_binding()
        self.bind(binding, "x", tensor)
        self.bind_host_output(binding, "y", out, count=False)
        engine.run_binding(binding)
        self._count(down=out.nbytes)
        return out

    def whole(self, tensor: DeviceTensor) -> Any:
        """The ``OrtValue`` holding exactly this tensor (the tensor's own when it covers it whole, else
        a device copy): what ``InferenceSession`` IO binding takes as an input value."""
        if tensor.offset == 0 and tuple(tensor.value.shape()) == tensor.shape:
            return tensor.value
        out = self.empty(tensor.shape, tensor.dtype)
        self.copy(out, tensor)
        return out.value

    def stack(self, tensors: list[DeviceTensor]) -> DeviceTensor:
        """The tensors concatenated along their leading axis into a new device tensor."""
        first = tensors[0]
        out = self.empty((sum(t.shape[0] for t in tensors), *first.shape[1:]), first.dtype)
        row = 0
        for t in tensors:
            self.copy(out.rows(row, row + t.shape[0]), t)
            row += t.shape[0]
        return out

    # -- IO binding ------------------------------------------------------------------------------
    def bind(self, binding: Any, name: str, tensor: DeviceTensor, output: bool = False) -> None:
        """Bind a device tensor or view by address (no copy)."""
        fn = binding.bind_output if output else binding.bind_input
        fn(name, self.device, self.device_id, tensor.dtype.type, list(tensor.shape), tensor.address)

    def bind_host_input(self, binding: Any, name: str, array: np.ndarray) -> None:
        """A host array as an input: ONNX Runtime copies it to the device (counted)."""
        array = np.ascontiguousarray(array)
        binding.bind_cpu_input(name, array)
        self._count(up=array.nbytes)

    def bind_host_output(self, binding: Any, name: str, array: np.ndarray, count: bool = True) -> None:
        """A writeable C-contiguous host array as an output: the result is written into it (counted)."""
        binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
        if count:
            self._count(down=array.nbytes)

    def tensor(self, value: Any) -> DeviceTensor:
        """An ``OrtValue`` on this device as a :class:`DeviceTensor`."""
        return DeviceTensor(self, value, tuple(value.shape()), np.dtype(ORT_TYPES[value.data_type()]))

