"""Frame -> feature map for one stream (METHOD.md section 1).

A pixel-space bundle runs preprocess -> noise -> feature graph; a Stable Diffusion bundle runs
preprocess -> VAE encoder -> noise (in latent space) -> U-Net. The engines belong to the runtime
and are shared by every stream; each stream asks them for a fork (``fork_engine``: the same
ONNX Runtime engine, a TensorRT execution context of its own); the noise bank and the buffers
belong to the stream.

With a :class:`~diffvos.runtime.device.DeviceIO` (the device step, ``propagation_kernel="graph"``)
the feature map stays in device memory (:class:`~diffvos.runtime.device.DeviceTensor`) and the
input is made there too (:mod:`diffvos.runtime.input_graph`): per frame only the uint8 frame, at
the model input size, goes up. Fresh noise per frame and DDIM inversion make x_t on the host,
which then goes up whole.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Mapping

import numpy as np

from diffvos.bundle import FEATURES_GRAPH, VAE_GRAPH, Manifest
from diffvos.bundle.sizes import input_size
from diffvos.errors import InputError
from diffvos.runtime.ddim import DDIMInverter
from diffvos.runtime.device import DeviceIO, DeviceTensor
from diffvos.runtime.engine import Engine, fork_engine, runs_on_device, single_input
from diffvos.runtime.input_graph import InputSpec
from diffvos.runtime.noise import NoiseInjector
from diffvos.runtime.preprocess import resize_frame, to_model_input

if TYPE_CHECKING:
    from diffvos.runtime.graph_engines import GraphEngines

Tensor = np.ndarray | DeviceTensor


class Features:
    """One stream's feature extraction over shared engines (not thread-safe: one per stream).

    ``inversion_steps`` > 0 replaces the random noise by DDIM inversion of x_0 in that many
    steps (:mod:`diffvos.runtime.ddim`; the bundle needs its noise-prediction graph); the E
    draws of the graph's batch are then the same x_t."""

    def __init__(self, manifest: Manifest, engines: Mapping[str, Engine], seed: int = 0,
                 fresh_noise: bool = False, inversion_steps: int = 0, *, device: DeviceIO | None = None,
                 graphs: GraphEngines | None = None) -> None:
        self.manifest = manifest
        self._shared = [e for e in (engines[FEATURES_GRAPH], engines.get(VAE_GRAPH)) if e is not None]
        self.engine = fork_engine(engines[FEATURES_GRAPH])
        self.vae = fork_engine(engines[VAE_GRAPH]) if engines.get(VAE_GRAPH) is not None else None
        self.seed, self.fresh_noise = seed, fresh_noise
        self._input = single_input(self.engine).name
        self._output = self.engine.outputs[0].name
        self._noise: dict[tuple[int, ...], NoiseInjector] = {}
        self.inverter: DDIMInverter | None = None
        if inversion_steps:
            if manifest.ddim is None or manifest.ddim.graph not in engines:
                raise InputError(f"inversion_steps={inversion_steps} needs a bundle with a noise-prediction graph "
                                 "(export it with --noise-graph)")
            self._shared.append(engines[manifest.ddim.graph])
            self.inverter = DDIMInverter(fork_engine(engines[manifest.ddim.graph]), manifest.ddim, manifest.timestep,
                                         inversion_steps)
        self._x0: dict[tuple[int, int], np.ndarray] = {}
        self.timings: dict[str, float] = {}
        on_device = device is not None and graphs is not None and runs_on_device(self.engine) and \
            (self.vae is None or runs_on_device(self.vae))
        self.device = device if on_device else None  # None: host arrays in and out
        self.graphs = graphs
        self._device_noise: dict[tuple[int, ...], DeviceTensor] = {}

    @property
    def stride(self) -> int:
        return self.manifest.stride

    @property
    def max_streams(self) -> int:
        """Streams one call of the feature graph takes (1 for bundles without a stream axis)."""
        return self.manifest.streams.max_streams

    def input_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return input_size(self.manifest, frame_hw)

    def grid_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = self.input_size(frame_hw)
        return h // self.stride, w // self.stride

    def prepare(self, frame: np.ndarray, color: str = "BGR") -> dict[str, Tensor]:
        """The feature graph's feed for a uint8 HxWx3 frame: x_t [E, Cin, H, W] (on the host the
        buffer is reused by the next call; on the device a new tensor). Records the preprocess and
        VAE times."""
        if self.device is not None and self.inverter is None and not self.fresh_noise:
            return {self._input: self._prepare_on_device(frame, color)}
        m = self.manifest
        t0 = time.perf_counter()
        size = self.input_size(frame.shape[:2])
        if size not in self._x0:
            self._x0[size] = np.empty((3, *size), np.float32)
        x0 = to_model_input(frame, size, m.preprocess, color, out=self._x0[size])
        t1 = time.perf_counter()
        if self.vae is not None:
            x0 = next(iter(self.vae.infer({single_input(self.vae).name: x0[None]}).values()))[0]
        t2 = time.perf_counter()
        if self.inverter is not None:
            x_t = self.inverter(x0)
            self.timings = {"preprocess_ms": (t1 - t0) * 1e3, "vae_ms": (t2 - t1) * 1e3,
                            "inversion_ms": self.inverter.last_ms}
            return {self._input: np.ascontiguousarray(np.broadcast_to(x_t, (m.ensemble, *x_t.shape[1:])))}
        self.timings = {"preprocess_ms": (t1 - t0) * 1e3, "vae_ms": (t2 - t1) * 1e3}
        return {self._input: self._injector(x0.shape)(x0)}

    def _injector(self, shape: tuple[int, ...]) -> NoiseInjector:
        """The stream's noise for x_0 of ``shape`` (C, H, W): made once per size, seeded."""
        injector = self._noise.get(shape)
        if injector is None:
            m = self.manifest
            injector = self._noise[shape] = NoiseInjector(m.alpha_bar, m.ensemble, shape, seed=self.seed,
                                                          fresh=self.fresh_noise)
        return injector

    def run(self, x_t: Tensor) -> Tensor:
        """The feature graph on x_t [B*E, Cin, H, W] (B streams' prepared inputs, stacked; B = 1
        unless the bundle has a stream axis) -> features [B, C, h, w], one engine call; on the
        device step both stay in device memory (a host x_t goes up first)."""
        if self.device is None:
            return self.engine.infer({self._input: np.asarray(x_t)})[self._output]
        if isinstance(x_t, np.ndarray):
            x_t = self.device.upload(x_t)
        out = self.engine.infer_on_device({self._input: self.device.whole(x_t)})  # type: ignore[attr-defined]
        return self.device.tensor(out[self._output])

    def stack(self, inputs: list[Tensor]) -> Tensor:
        """Several streams' prepared inputs as one batch (:meth:`run` takes it)."""
        if len(inputs) == 1:
            return inputs[0]
        if all(isinstance(x, DeviceTensor) for x in inputs) and self.device is not None:
            return self.device.stack(inputs)  # type: ignore[arg-type]
        return np.concatenate([np.asarray(x) for x in inputs], axis=0)

    def _prepare_on_device(self, frame: np.ndarray, color: str) -> DeviceTensor:
        """x_t made in device memory from the uint8 frame: the frame is resized on the host (uint8,
        as :func:`to_model_input` does) and uploaded; the rest is :mod:`diffvos.runtime.input_graph`."""
        m, io = self.manifest, self.device
        assert io is not None
        t0 = time.perf_counter()
        size = self.input_size(frame.shape[:2])
        small = resize_frame(frame, size)
        if self.vae is None:
            x_t = self._run_input(InputSpec.frame(size, m.preprocess, color, m.ensemble, m.alpha_bar), "frame", small)
            self.timings = {"preprocess_ms": (time.perf_counter() - t0) * 1e3, "vae_ms": 0.0}
            return x_t
        x0 = self._run_input(InputSpec.frame(size, m.preprocess, color), "frame", small)
        t1 = time.perf_counter()
        latent = io.tensor(next(iter(self.vae.infer_on_device(  # type: ignore[attr-defined]
            {single_input(self.vae).name: io.whole(x0)}).values())))
        t2 = time.perf_counter()
        _, c, h, w = latent.shape
        x_t = self._run_input(InputSpec("latent", h, w, c, ensemble=m.ensemble, alpha_bar=m.alpha_bar), "x0", latent)
        self.timings = {"preprocess_ms": (t1 - t0 + time.perf_counter() - t2) * 1e3, "vae_ms": (t2 - t1) * 1e3}
        return x_t

    def _run_input(self, spec: InputSpec, name: str, value: np.ndarray | DeviceTensor) -> DeviceTensor:
        io, graphs = self.device, self.graphs
        assert io is not None and graphs is not None
        engine = graphs.input(spec)
        binding = engine.io_binding()
        if isinstance(value, DeviceTensor):
            io.bind(binding, name, value)
        else:
            io.bind_host_input(binding, name, value)  # the only per-frame upload: the uint8 frame
        shape = (spec.channels, spec.height, spec.width)
        if spec.noisy:
            io.bind(binding, "noise", self._noise_on_device(shape))
        out = io.empty((spec.ensemble or 1, *shape), np.float32)
        io.bind(binding, "x_t" if spec.ensemble else "x0", out, output=True)
        engine.run_binding(binding)
        return out

    def _noise_on_device(self, shape: tuple[int, ...]) -> DeviceTensor:
        """The stream's fixed noise draws (the host path's, same seed), uploaded once per size."""
        if shape not in self._device_noise:
            injector = self._injector(shape)
            assert self.device is not None and injector.draws is not None
            self._device_noise[shape] = self.device.upload(injector.draws)
        return self._device_noise[shape]

    def __call__(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        """uint8 HxWx3 frame -> float32 features [C, h, w]; per-stage timings in ``timings`` (ms)."""
        (x_t,) = self.prepare(frame, color).values()
        t0 = time.perf_counter()
        features = self.run(x_t)[0]
        self.timings["features_ms"] = (time.perf_counter() - t0) * 1e3
        return features

    def close(self) -> None:
        """Close this stream's forks (the shared engines stay with the runtime)."""
        for engine in (self.engine, self.vae, self.inverter.engine if self.inverter else None):
            if engine is not None and not any(engine is e for e in self._shared):
                engine.close()

    @property
    def nbytes(self) -> int:
        """Bytes of this stream's buffers (model inputs and noise banks)."""
        return sum(a.nbytes for a in self._x0.values()) + sum(n.nbytes for n in self._noise.values()) + \
            sum(t.nbytes for t in self._device_noise.values())
