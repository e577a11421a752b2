"""Transformer denoiser: action-sequence tokens self-attend (optionally causally) and cross-attend to
[diffusion-step token; conditioning tokens] (the time-series transformer variant of Diffusion Policy).

(B, T, A) noisy actions, (B,) diffusion steps, (B, L, d_cond) conditioning tokens -> (B, T, A) noise estimate.
Unlike the U-Net it keeps the conditioning as a token sequence, so per-camera pooled S2 tokens are attended to
individually instead of being flattened.
"""

from __future__ import annotations

import torch
from torch import nn

from s2robot.policies.unet1d import SinusoidalPosEmb

__all__ = ["TransformerDenoiser"]


class TransformerDenoiser(nn.Module):
    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        horizon: int,
        n_cond_tokens: int,
        d_model: int = 256,
        n_layers: int = 8,
        n_heads: int = 4,
        dropout: float = 0.1,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"transformer.d_model={d_model} must be divisible by n_heads={n_heads}")
        self.horizon = horizon
        self.in_proj = nn.Linear(action_dim, d_model)
        self.pos = nn.Parameter(torch.randn(1, horizon, d_model) * 0.02)
        self.step_embed = nn.Sequential(SinusoidalPosEmb(d_model), nn.Linear(d_model, d_model), nn.Mish())
        self.cond_proj = nn.Linear(cond_dim, d_model)
        self.cond_pos = nn.Parameter(torch.randn(1, n_cond_tokens + 1, d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(
            d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, n_layers)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, action_dim)
        mask = nn.Transformer.generate_square_subsequent_mask(horizon) if causal else None
        self.causal = causal
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        T = sample.shape[1]
        if T != self.horizon:
            raise ValueError(f"TransformerDenoiser was built for horizon {self.horizon}, got a sequence of {T}")
        x = self.in_proj(sample) + self.pos
        memory = torch.cat([self.step_embed(timestep)[:, None], self.cond_proj(cond)], dim=1) + self.cond_pos
        x = self.decoder(x, memory, tgt_mask=self.mask, tgt_is_causal=self.causal)
        return self.out(self.norm(x))
