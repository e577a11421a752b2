"""Exponential moving average of a policy's trainable weights (diffusers ``EMAModel`` with power warm-up).

Decay at optimisation step k is ``min(max_decay, 1 - (1 + k / inv_gamma) ** -power)`` — the schedule Diffusion
Policy uses (power 0.75, max 0.9999). Shadow weights are keyed by parameter name so they can be stored in
safetensors next to the raw weights (``ema.<name>``) and restored exactly.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import torch
from diffusers.training_utils import EMAModel
from torch import nn

__all__ = ["PolicyEMA", "EMA_PREFIX"]

EMA_PREFIX = "ema."


class PolicyEMA:
    """EMA over ``policy.trainable_named_parameters()``."""

    def __init__(
        self, policy: nn.Module, max_decay: float = 0.9999, power: float = 0.75, inv_gamma: float = 1.0,
        min_decay: float = 0.0, update_after_step: int = 0,
    ) -> None:
        if not 0.0 <= min_decay <= max_decay < 1.0:
            raise ValueError(f"EMA needs 0 <= min_decay <= max_decay < 1, got {min_decay}, {max_decay}")
        named = policy.trainable_named_parameters()
        self.names = [n for n, _ in named]
        self.model = EMAModel(
            [p for _, p in named], decay=max_decay, min_decay=min_decay, update_after_step=update_after_step,
            use_ema_warmup=True, inv_gamma=inv_gamma, power=power, foreach=True,
        )
        self._params: tuple[weakref.ref, list[nn.Parameter]] | None = None

    def params(self, policy: nn.Module) -> list[nn.Parameter]:
        """``policy``'s parameters in the order of the shadow weights (looked up once per policy: every step
        asks)."""
        if self._params is None or self._params[0]() is not policy:
            named = dict(policy.trainable_named_parameters())
            self._params = (weakref.ref(policy), [named[n] for n in self.names])
        return self._params[1]

    @contextlib.contextmanager
    def applied(self, policy: nn.Module) -> Iterator[None]:
        """Temporarily put the averaged weights into ``policy`` (validation, rollouts); restores them after."""
        params = self.params(policy)
        self.model.store(params)
        self.model.copy_to(params)
        try:
            yield
        finally:
            self.model.restore(params)

    @torch.no_grad()
    def step(self, policy: nn.Module) -> None:
        self.model.step(self.params(policy))

    def copy_to(self, policy: nn.Module) -> None:
        """Write the averaged weights into ``policy``'s parameters."""
        self.model.copy_to(self.params(policy))

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{"ema.<param name>": shadow tensor}`` for safetensors."""
        return {EMA_PREFIX + n: t.detach().contiguous() for n, t in zip(self.names, self.model.shadow_params)}

    def counters(self) -> dict[str, Any]:
        """JSON-able scalar state (step counter and schedule)."""
        sd = self.model.state_dict()
        return {k: v for k, v in sd.items() if k != "shadow_params"}

    def load(self, tensors: dict[str, torch.Tensor], counters: dict[str, Any] | None = None) -> None:
        missing = [n for n in self.names if EMA_PREFIX + n not in tensors]
        if missing:
            raise KeyError(f"checkpoint lacks EMA weights for {missing[:5]}{'...' if len(missing) > 5 else ''}")
        for shadow, n in zip(self.model.shadow_params, self.names):
            shadow.copy_(tensors[EMA_PREFIX + n])
        if counters:
            self.model.optimization_step = int(counters.get("optimization_step", self.model.optimization_step))
            self.model.cur_decay_value = counters.get("cur_decay_value", getattr(self.model, "cur_decay_value", None))

    def to(self, device: torch.device) -> "PolicyEMA":
        self.model.to(device=device)
        return self
