"""Hyper-parameters of a guided-diffusion (ADM) U-Net, read from a JSON file or the defaults.

No torch here: the CLI can parse and validate a model config before any heavy import.
Field names follow guided-diffusion's command-line flags, so that a README's flag list can be
pasted into JSON as is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffvos.errors import InputError

# Keys that describe the diffusion process or the run rather than the network: accepted, kept in
# ``extras``, never used to build the model.
_INFORMATIONAL = frozenset(
    {
        "t", "ensemble", "input_hw", "layer",
        "diffusion_steps", "timestep_respacing", "use_kl", "predict_xstart",
        "rescale_timesteps", "rescale_learned_sigmas", "use_fp16", "use_checkpoint",
    }
)


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    """Accept [1, 2] or the guided-diffusion flag form "1,2"."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise InputError(f"{name} must be a list of integers, got {value!r}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{name} must be a non-empty list of integers, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise InputError(f"{name} must hold positive integers, got {value!r}")
    return tuple(value)


@dataclass
class ADMConfig:
    """guided-diffusion ``UNetModel`` settings; defaults = the public 256x256 unconditional model.

    ``attention_resolutions`` are feature-map sizes relative to ``image_size`` (as in
    guided-diffusion's ``create_model``): 32,16,8 at 256 means attention at strides 8, 16 and 32.
    """

    image_size: int = 256
    in_channels: int = 3
    num_channels: int = 256
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_heads: int = 4
    num_head_channels: int = 64  # -1: use num_heads
    num_heads_upsample: int = -1  # -1: same as num_heads
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    dropout: float = 0.0  # training only; kept for the state-dict layout
    class_cond: bool = False  # only unconditional models are supported
    noise_schedule: str = "linear"
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.channel_mult = _int_tuple(self.channel_mult, "channel_mult")
        self.attention_resolutions = (
            () if self.attention_resolutions in ("", (), []) else _int_tuple(self.attention_resolutions, "attention_resolutions")
        )
        for name in ("image_size", "in_channels", "num_channels", "num_res_blocks", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        for name in ("num_head_channels", "num_heads_upsample"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not (v == -1 or v > 0):
                raise InputError(f"{name} must be a positive integer or -1, got {v!r}")
        for name in ("learn_sigma", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "class_cond"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.class_cond:
            raise InputError("class-conditional ADM models are not supported (class_cond must be false)")
        if self.noise_schedule != "linear":
            raise InputError(f"only the linear noise schedule is supported, got noise_schedule={self.noise_schedule!r}")
        for c in self.level_channels:
            if c % 32:
                raise InputError(f"channel counts must be multiples of 32 (GroupNorm with 32 groups), got {c}")
        for r in self.attention_resolutions:
            if self.image_size % r:
                raise InputError(f"attention resolution {r} does not divide image_size {self.image_size}")
        if self.num_head_channels != -1:
            for level, c in enumerate(self.level_channels):
                if 2**level in self.attention_strides and c % self.num_head_channels:
                    raise InputError(f"num_head_channels {self.num_head_channels} does not divide {c} channels")

    # derived facts -------------------------------------------------------------------------
    @property
    def level_channels(self) -> list[int]:
        return [self.num_channels * m for m in self.channel_mult]

    @property
    def attention_strides(self) -> frozenset[int]:
        """Downsampling factors at which attention blocks sit."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def total_stride(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def num_output_blocks(self) -> int:
        return len(self.channel_mult) * (self.num_res_blocks + 1)

    def heads_for(self, channels: int, upsample: bool = False) -> int:
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads

    # (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready hyper-parameters (without ``extras``), as the manifest records them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extras"}
        out["channel_mult"] = list(self.channel_mult)
        out["attention_resolutions"] = list(self.attention_resolutions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> "ADMConfig":
        if not isinstance(data, dict):
            raise InputError(f"model config must be a JSON object, got {type(data).__name__}", source)
        names = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        unknown = sorted(k for k in data if k not in names and k not in _INFORMATIONAL and not k.startswith("_"))
        if unknown:
            raise InputError(f"unknown ADM model config field(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})", source)
        kwargs = {k: v for k, v in data.items() if k in names}
        extras = {k: v for k, v in data.items() if k not in names}
        try:
            return cls(**kwargs, extras=extras)
        except InputError as exc:
            raise InputError(f"invalid ADM model config: {exc}", source) from None

    @classmethod
    def from_json(cls, path: str | Path) -> "ADMConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("model config not found", path) from None
        except OSError as exc:
            raise InputError(f"cannot read model config: {exc.strerror or exc}", path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"model config is not valid JSON: {exc}", path) from None
        return cls.from_dict(data, path)
