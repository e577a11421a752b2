"""``Normalizer``: per-key affine normalisation whose state lives in registered buffers.

Each key gets ``y = x * scale + offset``:

- ``"minmax"``: maps the fitted [min, max] of every dim to [-1, 1]. A constant dim (range < ``eps``) gets
  ``scale = 1`` and maps its value to 0, so it neither explodes nor saturates.
- ``"gaussian"``: zero mean, unit std per dim; a constant dim (std < ``eps``) gets ``std = 1``.
- ``"identity"``: ``scale = 1``, ``offset = 0`` (kept so a policy can treat every key alike).

The buffers (``<key>.scale``, ``<key>.offset``, ``<key>.mode`` and the raw stats ``min``/``max``/``mean``/``std``)
are part of ``state_dict()``, so they save with the policy's ``model.safetensors`` (no pickle). An empty
``Normalizer()`` inside a freshly built policy creates its keys while ``load_state_dict`` runs, so loading needs
no stats up front; :meth:`Normalizer.from_state_dict` does the same stand-alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

MODES = {"identity": 0, "minmax": 1, "gaussian": 2}
_BUFFERS = ("scale", "offset", "mode", "min", "max", "mean", "std")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _KeyStats(nn.Module):
    """Buffers for one key; every per-dim buffer has shape (D,) (or the trailing shape of the data)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        for name in ("scale", "min", "max", "std"):
            self.register_buffer(name, torch.ones(shape))
        for name in ("offset", "mean"):
            self.register_buffer(name, torch.zeros(shape))
        self.register_buffer("mode", torch.zeros((), dtype=torch.int64))


class Normalizer(nn.Module):
    """Per-key normalisation to [-1, 1] (``minmax``) or zero-mean unit-std (``gaussian``)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...] | int] | None = None, eps: float = 1e-4):
        """``shapes`` optionally declares keys (``{key: per-step shape}``) before :meth:`fit` or loading."""
        super().__init__()
        self.eps = eps
        self.stats = nn.ModuleDict()
        for key, shape in (shapes or {}).items():
            self._add(key, (shape,) if isinstance(shape, int) else tuple(shape))

    def _add(self, key: str, shape: tuple[int, ...]) -> _KeyStats:
        if not _KEY_RE.match(key):
            raise ValueError(f"normalizer key {key!r} must be a python identifier (no dots)")
        self.stats[key] = _KeyStats(shape)
        return self.stats[key]

    @property
    def keys(self) -> list[str]:
        return list(self.stats.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.stats

    @torch.no_grad()
    def fit(
        self, data: Mapping[str, torch.Tensor | np.ndarray], modes: Mapping[str, str] | str = "minmax"
    ) -> Normalizer:
        """Fit ``data[key]`` of shape (..., D): statistics are taken over every leading dim.

        ``modes``: one mode for all keys or ``{key: "minmax" | "gaussian" | "identity"}``.
        """
        for key, value in data.items():
            mode = modes if isinstance(modes, str) else modes.get(key, "minmax")
            if mode not in MODES:
                raise ValueError(f"normalizer mode for {key!r} must be one of {list(MODES)}, got {mode!r}")
            x = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value).double()
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(f"cannot fit normalizer key {key!r} on empty data of shape {tuple(x.shape)}")
            x = x.reshape(-1, *x.shape[1:]) if x.ndim == 1 else x.reshape(-1, *x.shape[-1:])
            if not torch.isfinite(x).all():
                raise ValueError(f"normalizer key {key!r}: data contains NaN or inf")
            lo, hi, mean = x.amin(0), x.amax(0), x.mean(0)
            std = x.std(0, unbiased=False)
            if mode == "minmax":
                span = hi - lo
                const = span < self.eps
                scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(self.eps))
                offset = torch.where(const, -lo, -1.0 - lo * scale)
            elif mode == "gaussian":
                safe_std = torch.where(std < self.eps, torch.ones_like(std), std)
                scale, offset = 1.0 / safe_std, -mean / safe_std
            else:
                scale, offset = torch.ones_like(mean), torch.zeros_like(mean)
            s = self._add(key, tuple(mean.shape))
            for name, v in dict(scale=scale, offset=offset, min=lo, max=hi, mean=mean, std=std).items():
                getattr(s, name).copy_(v.float())
            s.mode.fill_(MODES[mode])
        return self

    def _get(self, key: str) -> _KeyStats:
        if key not in self.stats:
            raise KeyError(f"normalizer has no key {key!r}; fitted keys: {self.keys}")
        return self.stats[key]

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """(..., D) in data units -> normalised (..., D)."""
        s = self._get(key)
        return x * s.scale.to(x.dtype) + s.offset.to(x.dtype)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """(..., D) normalised -> data units (..., D)."""
        s = self._get(key)
        return (x - s.offset.to(x.dtype)) / s.scale.to(x.dtype)

    def mode(self, key: str) -> str:
        code = int(self._get(key).mode)
        return next(name for name, c in MODES.items() if c == code)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every key of ``batch`` this normaliser knows; pass the others through."""
        return {k: self.normalize(k, v) if k in self.stats else v for k, v in batch.items()}

    # ------------------------------------------------------------------ loading without prior stats
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        """Create keys found in ``state_dict`` (``<prefix>stats.<key>.scale`` ...) before children load."""
        head = prefix + "stats."
        for name, value in state_dict.items():
            if name.startswith(head) and name.endswith(".scale"):
                key = name[len(head) : -len(".scale")]
                if "." not in key and (key not in self.stats or self.stats[key].scale.shape != value.shape):
                    self._add(key, tuple(value.shape))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], prefix: str = "") -> Normalizer:
        """Rebuild from a ``state_dict`` (e.g. loaded with ``safetensors.torch.load_file``); ``prefix`` selects a
        sub-module's entries, e.g. ``"normalizer."``."""
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix + "stats.")}
        if not sub:
            raise KeyError(f"no normalizer entries under prefix {prefix!r} in the state dict")
        norm = cls()
        norm.load_state_dict(sub)
        return norm

    def extra_repr(self) -> str:
        return ", ".join(f"{k}:{self.mode(k)}{tuple(self.stats[k].scale.shape)}" for k in self.keys)
