"""Behaviour-cloning output heads: deterministic MLP (L2 / L1) and a Gaussian mixture (GMM).

Both map features (..., F) to an action chunk (..., S, A) of S steps in normalised units and share one interface:
``loss(feat, target)`` -> scalar and ``predict(feat, generators)`` -> (..., S, A). The GMM models the whole chunk
(S * A values) as one mixture, so a mode is a coherent chunk, using ``torch.distributions.MixtureSameFamily``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from s2robot.policies.base import rand_rows, randn_rows

__all__ = ["mlp", "MLPHead", "GMMHead"]


def mlp(in_dim: int, hidden: int, out_dim: int, n_layers: int, dropout: float = 0.0) -> nn.Sequential:
    """``n_layers`` hidden Linear+Mish layers of width ``hidden`` then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.Mish(), nn.Dropout(dropout)]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class MLPHead(nn.Module):
    """Deterministic chunk regression; ``loss_type`` "l2" (MSE) or "l1"."""

    def __init__(
        self, in_dim: int, steps: int, action_dim: int, hidden: int, n_layers: int, loss_type: str = "l2",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if loss_type not in ("l2", "l1"):
            raise ValueError(f"MLP head loss must be 'l2' or 'l1', got {loss_type!r}")
        self.steps, self.action_dim, self.loss_type = steps, action_dim, loss_type
        self.net = mlp(in_dim, hidden, steps * action_dim, n_layers, dropout)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat).unflatten(-1, (self.steps, self.action_dim))

    def loss(self, feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = self(feat)
        return F.mse_loss(pred, target) if self.loss_type == "l2" else F.l1_loss(pred, target)

    def predict(self, feat: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        return self(feat)


class GMMHead(nn.Module):
    """Mixture of ``n_modes`` diagonal Gaussians over the flattened chunk (robomimic-style GMM).

    ``eval_mode``: "sample" draws a component and a Gaussian sample; "low_noise" (robomimic's ``low_noise_eval``)
    draws a component and returns its mean; "mode" returns the mean of the most likely component.
    """

    def __init__(
        self, in_dim: int, steps: int, action_dim: int, hidden: int, n_layers: int, n_modes: int = 5,
        min_std: float = 1e-4, eval_mode: str = "low_noise", dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if eval_mode not in ("sample", "low_noise", "mode"):
            raise ValueError(f"GMM eval_mode must be 'sample', 'low_noise' or 'mode', got {eval_mode!r}")
        if n_modes < 1:
            raise ValueError(f"GMM n_modes must be >= 1, got {n_modes}")
        self.steps, self.action_dim, self.n_modes = steps, action_dim, n_modes
        self.min_std, self.eval_mode = min_std, eval_mode
        self.out = steps * action_dim
        self.net = mlp(in_dim, hidden, n_modes * (2 * self.out + 1), n_layers, dropout)

    def params(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """means (..., K, S*A), stds (..., K, S*A), logits (..., K)."""
        raw = self.net(feat)
        K, O = self.n_modes, self.out
        means = torch.tanh(raw[..., : K * O]).unflatten(-1, (K, O))
        stds = F.softplus(raw[..., K * O : 2 * K * O]).unflatten(-1, (K, O)) + self.min_std
        logits = raw[..., 2 * K * O :]
        return means, stds, logits

    def distribution(self, feat: torch.Tensor) -> D.MixtureSameFamily:
        means, stds, logits = self.params(feat)
        comp = D.Independent(D.Normal(means, stds), 1)
        return D.MixtureSameFamily(D.Categorical(logits=logits), comp)

    def loss(self, feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -self.distribution(feat).log_prob(target.flatten(-2)).mean()

    def predict(self, feat: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """(B, F) -> (B, S, A); random draws are taken row-wise from ``generators`` when given."""
        means, stds, logits = self.params(feat)
        B = feat.shape[0]
        if self.eval_mode == "mode":
            k = logits.argmax(-1)
        else:  # inverse-CDF categorical draw from a per-row uniform
            cdf = logits.softmax(-1).cumsum(-1)
            u = rand_rows((B, 1), generators, feat.device, cdf.dtype)
            k = (u > cdf).sum(-1).clamp(max=self.n_modes - 1)
        idx = k[:, None, None].expand(B, 1, self.out)
        mean = means.gather(1, idx)[:, 0]
        if self.eval_mode == "sample":
            std = stds.gather(1, idx)[:, 0]
            mean = mean + std * randn_rows((B, self.out), generators, feat.device, mean.dtype)
        return mean.unflatten(-1, (self.steps, self.action_dim))
