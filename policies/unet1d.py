"""1-D temporal conditional U-Net with FiLM conditioning (the CNN denoiser of Diffusion Policy, written afresh).

Input: a noisy action sequence (B, T, A), diffusion step (B,) and conditioning tokens (B, L, d) which are
flattened to a global vector. Every residual block is FiLM-modulated (per-channel scale and bias) by
[diffusion-step embedding, global conditioning]. Down path halves T per level except the last, so
T must be divisible by 2 ** (len(down_dims) - 1).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["SinusoidalPosEmb", "ConditionalUnet1D"]


class SinusoidalPosEmb(nn.Module):
    """(B,) diffusion steps -> (B, dim) sinusoidal embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        ang = t.float()[:, None] * freqs[None]
        return torch.cat([ang.sin(), ang.cos()], dim=-1)


def _conv_block(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout), nn.Mish())


class FiLMResBlock1D(nn.Module):
    """conv-GN-Mish, FiLM(cond), conv-GN-Mish, plus a 1x1 residual projection. (B, Cin, T) -> (B, Cout, T)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.block1 = _conv_block(cin, cout, k, groups)
        self.block2 = _conv_block(cout, cout, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.film(cond)[..., None].chunk(2, dim=1)
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noise predictor eps(x_t, t, cond): (B, T, A), (B,), (B, L, d) -> (B, T, A)."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        horizon: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
    ) -> None:
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("unet.down_dims is empty")
        if any(d % n_groups for d in down_dims):
            raise ValueError(f"every unet.down_dims entry must be divisible by n_groups={n_groups}, got {down_dims}")
        factor = 2 ** (len(down_dims) - 1)
        if horizon % factor:
            raise ValueError(
                f"horizon={horizon} must be divisible by 2**(len(down_dims)-1)={factor} for the U-Net; "
                "change the horizon or use fewer down_dims"
            )
        self.step_embed = nn.Sequential(
            SinusoidalPosEmb(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        film_dim = step_embed_dim + cond_dim
        dims = [action_dim] + down_dims
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([
                FiLMResBlock1D(cin, cout, film_dim, kernel_size, n_groups),
                FiLMResBlock1D(cout, cout, film_dim, kernel_size, n_groups),
                nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not last else nn.Identity(),
            ]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([FiLMResBlock1D(mid, mid, film_dim, kernel_size, n_groups) for _ in range(2)])
        self.up = nn.ModuleList()
        for cout, cin in reversed(list(zip(down_dims[:-1], down_dims[1:]))):  # each up level undoes one downsample
            self.up.append(nn.ModuleList([
                FiLMResBlock1D(2 * cin, cout, film_dim, kernel_size, n_groups),
                FiLMResBlock1D(cout, cout, film_dim, kernel_size, n_groups),
                nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(_conv_block(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        film = torch.cat([self.step_embed(timestep), cond.flatten(1)], dim=-1)
        x = sample.transpose(1, 2)  # (B, A, T)
        skips = []  # outputs of the levels below the top one, consumed by the up path in reverse
        for res1, res2, down in self.down:
            x = res2(res1(x, film), film)
            skips.append(x)
            x = down(x)
        skips.pop(0)  # the top level's output has no matching up level
        for res in self.mid:
            x = res(x, film)
        for res1, res2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, film), film))
        return self.final(x).transpose(1, 2)
