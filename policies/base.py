"""Shared policy machinery: shape metadata, the common interface and per-row random draws.

Every policy is an ``nn.Module`` with

- ``compute_loss(batch) -> scalar`` (also its ``forward``, so ``DistributedDataParallel`` can wrap it),
- ``predict_action(obs, generators=None) -> (B, n_action_steps, A)`` in env units,
- ``n_obs_steps``, ``n_action_steps``, ``horizon`` and ``reset()``,

and holds its normaliser (action and proprio statistics) and its frozen image encoder as sub-modules, so its
``state_dict`` is all that is needed to rebuild it. Batches follow the dataset convention: observation keys with
shape (B, T_obs, ...) and ``"action"`` (B, horizon, A) whose step ``k`` is aligned with observation step ``k``.
The action executed "now" (at the last observation step) is therefore ``action[:, n_obs_steps - 1]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2robot.policies.action_queue import check_ensemble_coefficient

__all__ = ["ShapeMeta", "BasePolicy", "randn_rows", "rand_rows", "LOWDIM_OBS_KEYS"]

#: low-dim observation keys a policy may read, each one conditioning token: robot proprioception and the optional
#: privileged task state (object poses, goal; ``state_obs`` envs), the control-only upper bound.
LOWDIM_OBS_KEYS = ("proprio", "state")


@dataclass
class ShapeMeta:
    """What a policy needs to know about its inputs and outputs (stored in the checkpoint's config.yaml).

    ``cameras``: camera names (``"<cam>_image"`` / ``"<cam>_tokens"`` keys). ``image_shape``: (H, W, 3) of the raw
    frames. ``token_shape``: (N, D) of the tokens the policy consumes (after any cache pooling);
    ``num_prefix``: how many of the N tokens are prefix (CLS/register) tokens. ``token_pool_grid``: the grid
    the feature cache pooled to (the online path pools the same way), or None. ``proprio_dim``/``action_dim``:
    P and A. ``feature_hash``: the ``features/<hash>`` group matching the policy's encoder, if any.
    """

    cameras: list[str]
    proprio_dim: int
    action_dim: int
    image_shape: list[int] | None = None
    token_shape: list[int] | None = None
    num_prefix: int = 0
    token_pool_grid: int | None = None
    feature_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state_dim: int = 0
    token_reduce: dict[str, Any] | None = None
    estimated_state_dim: int = 0  # S of a state estimated from images (``policy.obs.estimate_state``), not read

    def __post_init__(self) -> None:
        self.cameras = [str(c) for c in self.cameras]
        if min(self.proprio_dim, self.state_dim, self.estimated_state_dim) < 0:
            raise ValueError(f"shape_meta.proprio_dim, state_dim and estimated_state_dim must be >= 0, got "
                             f"{self.proprio_dim}, {self.state_dim}, {self.estimated_state_dim}")
        if self.action_dim <= 0:
            raise ValueError(f"shape_meta.action_dim must be > 0, got {self.action_dim}")
        if self.image_shape is not None:
            self.image_shape = [int(v) for v in self.image_shape]
            if len(self.image_shape) != 3 or self.image_shape[2] != 3:
                raise ValueError(f"shape_meta.image_shape must be (H, W, 3), got {self.image_shape}")
        if self.token_shape is not None:
            self.token_shape = [int(v) for v in self.token_shape]
            if len(self.token_shape) != 2:
                raise ValueError(f"shape_meta.token_shape must be (N, D), got {self.token_shape}")

    @property
    def state_width(self) -> int:
        """S of the privileged state the policy reads or estimates (its normaliser's ``"state"``), 0 if neither."""
        return self.state_dim or self.estimated_state_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShapeMeta":
        return cls(**dict(d))


def _check_generators(generators: Sequence[torch.Generator] | None, batch: int) -> None:
    if generators is not None and len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch} rows; pass one per row or None")


def _rows(draw, shape: Sequence[int], generators: Sequence[torch.Generator] | None, device: torch.device | str,
          dtype: torch.dtype) -> torch.Tensor:
    """``draw(shape)`` (e.g. ``torch.randn``) with row ``i`` drawn from ``generators[i]`` (global RNG when None).

    Drawing row-wise makes a row's sample independent of the batch size and of the other rows, which the batched
    evaluator relies on. Each row is drawn on its generator's device, then moved to ``device``.
    """
    shape = tuple(int(s) for s in shape)
    if generators is None:
        return draw(shape, device=device, dtype=dtype)
    _check_generators(generators, shape[0])
    rows = [draw(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)


def randn_rows(shape: Sequence[int], generators: Sequence[torch.Generator] | None, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal of ``shape``, row-wise from ``generators`` (see :func:`_rows`)."""
    return _rows(torch.randn, shape, generators, device, dtype)


def rand_rows(shape: Sequence[int], generators: Sequence[torch.Generator] | None, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) of ``shape``, row-wise from ``generators`` (see :func:`_rows`)."""
    return _rows(torch.rand, shape, generators, device, dtype)


class BasePolicy(nn.Module):
    """Common interface and observation handling; subclasses add a head.

    Sub-modules: ``obs_conditioner`` (:class:`s2robot.policies.conditioning.ObsConditioner`) and ``normalizer``
    (:class:`s2robot.policies.normalizer.Normalizer` with ``"action"`` and, when P > 0 / S > 0, ``"proprio"`` /
    ``"state"`` stats).
    """

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_conditioner: nn.Module,
        normalizer: nn.Module,
        n_obs_steps: int,
        n_action_steps: int,
        horizon: int,
        temporal_ensemble: float | None = None,
    ) -> None:
        super().__init__()
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}")
        if horizon < n_obs_steps - 1 + n_action_steps:
            raise ValueError(
                f"horizon={horizon} is too short for n_obs_steps={n_obs_steps} and n_action_steps={n_action_steps}: "
                f"needs horizon >= n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps}"
            )
        self.shape_meta = shape_meta
        self.obs_conditioner = obs_conditioner
        self.normalizer = normalizer
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.horizon = int(horizon)
        # how evaluation and deployment execute the chunks by default (``policies.action_queue.execution_for``):
        # None = whole chunks, m = ACT temporal ensembling with weights exp(-m i)
        self.temporal_ensemble = check_ensemble_coefficient(temporal_ensemble, "policy.temporal_ensemble")
        self.action_dim = int(shape_meta.action_dim)

    # ----- interface -------------------------------------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def predict_action(
        self, obs: Mapping[str, torch.Tensor], generators: Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss; lets ``DistributedDataParallel(policy)(batch)`` synchronise gradients."""
        return self.compute_loss(batch)

    def reset(self) -> None:
        """Clear per-episode state (none for the built-in policies; observation history is the caller's)."""

    # ----- helpers ---------------------------------------------------------------------------------------------
    @property
    def obs_keys(self) -> list[str]:
        """Raw observation keys the policy consumes from an env: ``<cam>_image`` per camera, ``proprio`` and
        ``state`` (the privileged state, only for policies trained on it)."""
        keys = [f"{c}_image" for c in self.shape_meta.cameras]
        return keys + [k for k in LOWDIM_OBS_KEYS if self.lowdim_dim(k) > 0]

    def lowdim_dim(self, key: str) -> int:
        """Size of low-dim observation ``key`` (``proprio`` or ``state``), 0 when the policy does not read it."""
        return int(getattr(self.shape_meta, f"{key}_dim"))

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def train(self, mode: bool = True) -> "BasePolicy":
        super().train(mode)
        frozen = getattr(self.obs_conditioner, "token_encoder", None)
        if frozen is not None:
            frozen.eval()  # the frozen encoder never leaves eval mode
        return self

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that the optimiser and EMA update (frozen encoder excluded)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Conditioning tokens (B, n_obs_steps, M, d) from the last ``n_obs_steps`` observation steps.

        Accepts ``"<cam>_tokens"`` (B, T, N, D) or ``"<cam>_image"`` uint8 (B, T, H, W, 3) per camera and
        ``"proprio"`` (B, T, P) and ``"state"`` (B, T, S) when the policy reads them, with T >= n_obs_steps, as
        torch tensors or numpy arrays (moved to the policy's device); low-dim keys are normalised here.
        """
        return self._encode(obs)[0]

    def encode_obs_and_state_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (conditioning tokens as :meth:`encode_obs`, the weighted state-estimate loss or 0).

        With ``policy.obs.estimate_state`` the loss is ``state_loss_weight`` x MSE between the estimate (B, T, S)
        and the batch's ``"state"`` (B, T, S) normalised, over the last ``n_obs_steps`` steps.
        """
        tokens, estimate = self._encode(batch)
        if estimate is None:
            return tokens, tokens.new_zeros(())
        if "state" not in batch:
            raise KeyError(f"policy.obs.estimate_state trains against the batch's 'state' (B, T, "
                           f"{self.shape_meta.estimated_state_dim}); got {sorted(batch)}")
        target = self.normalizer.normalize("state", batch["state"][:, -self.n_obs_steps:].float())
        weight = float(self.obs_conditioner.cfg.state_loss_weight)
        return tokens, weight * F.mse_loss(estimate.float(), target)

    @torch.no_grad()
    def estimate_state(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What a ``policy.obs.estimate_state`` policy infers the privileged state to be from ``obs`` (the
        :meth:`encode_obs` inputs): (B, n_obs_steps, S) in the store's units, e.g. metres and (cos, sin) of yaw."""
        _, estimate = self._encode(obs)
        if estimate is None:
            raise ValueError("this policy does not estimate the state (trained with policy.obs.estimate_state=false)")
        return self.normalizer.unnormalize("state", estimate.float())

    def _encode(self, obs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """encode_obs's work -> (tokens (B, T_obs, M, d), state estimate (B, T_obs, S) or None)."""
        sliced: dict[str, torch.Tensor] = {}
        T = self.n_obs_steps
        for key, value in obs.items():
            if key == "action":
                continue
            value = self._obs_tensor(key, value)
            if value is None:
                continue
            if value.dim() < 3:
                raise ValueError(f"observation {key!r} needs shape (B, T_obs, ...), got {tuple(value.shape)}")
            if value.shape[1] < T:
                raise ValueError(
                    f"observation {key!r} has {value.shape[1]} time steps but the policy needs n_obs_steps={T}"
                )
            sliced[key] = value[:, -T:]
        for key in LOWDIM_OBS_KEYS:
            dim = self.lowdim_dim(key)
            if dim == 0:
                sliced.pop(key, None)
                continue
            if key not in sliced:
                raise KeyError(f"observation needs {key!r} (B, T_obs, {dim}); got {sorted(obs)}")
            sliced[key] = self.normalizer.normalize(key, sliced[key].float())
        return self.obs_conditioner.encode(sliced)

    def _obs_tensor(self, key: str, value: Any) -> torch.Tensor | None:
        """A tensor for an observation value: tensors as they are, numpy arrays converted onto the policy's device;
        other values are ignored unless the policy reads ``key`` (then a TypeError says what is accepted)."""
        if torch.is_tensor(value):
            return value
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
        wanted = set(self.obs_keys) | {f"{c}_tokens" for c in self.shape_meta.cameras}
        if key in wanted:
            raise TypeError(f"observation {key!r} is a {type(value).__name__}; predict_action takes torch tensors or "
                            f"numpy arrays shaped (B, T_obs, ...)")
        return None

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize("action", action.float())

    def unnormalize_action(self, naction: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize("action", naction)

    def action_window(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalised actions (B, horizon, A) from a batch, checking the shape."""
        if "action" not in batch:
            raise KeyError(f"training batch needs 'action'; got keys {sorted(batch)}")
        action = batch["action"]
        if action.dim() != 3 or action.shape[1] < self.horizon or action.shape[2] != self.action_dim:
            raise ValueError(
                f"batch['action'] must be (B, >= {self.horizon}, {self.action_dim}), got {tuple(action.shape)}"
            )
        return self.normalize_action(action[:, : self.horizon])
