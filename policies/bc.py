"""Behaviour cloning: MLP / GMM heads on the conditioning tokens, single step or action chunk, optionally through a
causal transformer over the observation history (BC-transformer).

- ``temporal="flat"``: the (T_obs, M, d) conditioning tokens are flattened into one vector and the head predicts
  the chunk ``action[:, T_obs-1 : T_obs-1+S]`` (S = n_action_steps; S = 1 is single-step BC).
- ``temporal="transformer"``: each observation step becomes one token, a causal transformer runs over the history
  and position t predicts ``action[:, t : t+S]`` (all positions are supervised, as in robomimic's BC-transformer);
  inference reads the last position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from s2robot.policies.action_queue import check_ensemble_coefficient
from s2robot.policies.base import BasePolicy, ShapeMeta
from s2robot.policies.bc_heads import GMMHead, MLPHead

__all__ = ["BCConfig", "BCPolicy"]


@dataclass
class BCConfig:
    """Options of :class:`BCPolicy` (the top level of ``configs/policy/bc_*.yaml``)."""

    n_obs_steps: int = 2
    n_action_steps: int = 8
    horizon: int | None = None  # default n_obs_steps - 1 + n_action_steps
    # how eval/deploy execute the chunks: ACT temporal ensembling coefficient m (replan every step, average the
    # chunks' predictions, weights exp(-m i)); null: whole chunks. m = 0 (a plain mean) measured best on lift_cube:
    # 131/150 vs 123/150 at m = 0.1 and 89/150 with whole chunks (docs/policies.md)
    temporal_ensemble: float | None = 0.0
    head: str = "mlp"  # "mlp" | "gmm"
    loss: str = "l2"  # MLP head: "l2" | "l1"
    hidden: int = 512
    n_layers: int = 3
    dropout: float = 0.0
    gmm_modes: int = 5
    gmm_min_std: float = 1e-4
    gmm_eval_mode: str = "low_noise"  # "sample" | "low_noise" | "mode"
    temporal: str = "flat"  # "flat" | "transformer"
    tf_d_model: int = 128
    tf_layers: int = 4
    tf_heads: int = 4
    tf_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.head not in ("mlp", "gmm"):
            raise ValueError(f"policy.head={self.head!r} is not 'mlp' or 'gmm'")
        if self.loss not in ("l2", "l1"):
            raise ValueError(f"policy.loss={self.loss!r} is not 'l2' or 'l1'")
        if self.temporal not in ("flat", "transformer"):
            raise ValueError(f"policy.temporal={self.temporal!r} is not 'flat' or 'transformer'")
        for name in ("n_obs_steps", "n_action_steps", "hidden", "gmm_modes", "tf_d_model", "tf_layers", "tf_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy.{name} must be >= 1, got {getattr(self, name)}")
        self.temporal_ensemble = check_ensemble_coefficient(self.temporal_ensemble, "policy.temporal_ensemble")
        if self.n_layers < 0:
            raise ValueError(f"policy.n_layers must be >= 0, got {self.n_layers}")
        if self.tf_d_model % self.tf_heads:
            raise ValueError(f"policy.tf_d_model={self.tf_d_model} must be divisible by tf_heads={self.tf_heads}")
        if self.horizon is None:
            self.horizon = self.n_obs_steps - 1 + self.n_action_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BCPolicy(BasePolicy):
    """BC with an MLP or GMM head; flat conditioning or a causal transformer over the observation history."""

    def __init__(self, cfg: BCConfig, shape_meta: ShapeMeta, obs_conditioner: nn.Module, normalizer: nn.Module) -> None:
        super().__init__(shape_meta, obs_conditioner, normalizer, cfg.n_obs_steps, cfg.n_action_steps, cfg.horizon,
                         cfg.temporal_ensemble)
        self.cfg = cfg
        step_dim = obs_conditioner.tokens_per_step * obs_conditioner.out_dim
        T = cfg.n_obs_steps
        if cfg.temporal == "transformer":
            d = cfg.tf_d_model
            self.step_proj = nn.Linear(step_dim, d)
            self.time_pos = nn.Parameter(torch.randn(1, T, d) * 0.02)
            layer = nn.TransformerEncoderLayer(
                d, cfg.tf_heads, 4 * d, cfg.tf_dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.history_tf = nn.TransformerEncoder(layer, cfg.tf_layers, enable_nested_tensor=False)
            self.temporal_norm = nn.LayerNorm(d)
            self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(T), persistent=False)
            head_in = d
        else:
            head_in = T * step_dim
        kw = dict(in_dim=head_in, steps=cfg.n_action_steps, action_dim=self.action_dim, hidden=cfg.hidden,
                  n_layers=cfg.n_layers, dropout=cfg.dropout)
        if cfg.head == "mlp":
            self.head = MLPHead(loss_type=cfg.loss, **kw)
        else:
            self.head = GMMHead(n_modes=cfg.gmm_modes, min_std=cfg.gmm_min_std, eval_mode=cfg.gmm_eval_mode, **kw)

    def _features(self, obs: Mapping[str, torch.Tensor], cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F) for flat, (B, T_obs, d) for the transformer; ``cond``: already encoded (B, T, M, d) tokens."""
        cond = self.encode_obs(obs) if cond is None else cond  # (B, T, M, d)
        if self.cfg.temporal == "flat":
            return cond.flatten(1)
        x = self.step_proj(cond.flatten(2)) + self.time_pos
        return self.temporal_norm(self.history_tf(x, mask=self.causal_mask, is_causal=True))

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        naction = self.action_window(batch)  # (B, horizon, A)
        cond, state_loss = self.encode_obs_and_state_loss(batch)
        feat = self._features(batch, cond)
        T, S = self.n_obs_steps, self.n_action_steps
        if self.cfg.temporal == "flat":
            return self.head.loss(feat, naction[:, T - 1 : T - 1 + S]) + state_loss
        # position t is supervised with action[t : t+S]
        targets = naction.unfold(1, S, 1)[:, :T].transpose(-1, -2)  # (B, T, S, A)
        return self.head.loss(feat, targets) + state_loss

    @torch.no_grad()
    def predict_action(
        self, obs: Mapping[str, torch.Tensor], generators: Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        feat = self._features(obs)
        if self.cfg.temporal == "transformer":
            feat = feat[:, -1]
        return self.unnormalize_action(self.head.predict(feat, generators))
