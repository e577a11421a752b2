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
import torch.nn.functional as F
from torch import nn

__all__ = ["SinusoidalPosEmb", "ConditionalUnet1D", "GemmConv1d", "FilmStep"]


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


class GemmConv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters, same state dict) whose float32 CPU inference forward is one im2col GEMM.

    At the U-Net's sizes (batch 1-8, T = 4-16, 64-512 channels) PyTorch's CPU convolution runs its generic
    im2col path at batch 1 and a oneDNN path that re-lays the weights on every call above it; one ``addmm`` over
    the unfolded input was 2-3x faster at both (benchmarks/bench_policy.py). Training (grad enabled), other
    devices and dtypes use ``nn.Conv1d.forward``, as does ``gemm = False`` (the reference, for benchmarks and
    tests), and so does tracing (``torch.jit.trace``, e.g. an OpenVINO conversion: the exported graph holds a plain
    convolution, which the engine runs faster than an unfold + GEMM). Results equal within float32 rounding.
    """

    gemm = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.gemm or torch.is_grad_enabled() or torch.jit.is_tracing() or x.device.type != "cpu"
                or x.dtype != torch.float32 or self.groups != 1 or self.dilation != (1,)
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return super().forward(x)
        B, C, _ = x.shape
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        if pad:
            x = F.pad(x, (pad, pad))
        cols = x.unfold(2, k, stride)  # (B, C, T_out, k)
        T_out = cols.shape[2]
        cols = cols.permute(0, 2, 1, 3).reshape(B * T_out, C * k)
        weight = self.weight.reshape(self.out_channels, C * k).t()
        out = torch.mm(cols, weight) if self.bias is None else torch.addmm(self.bias, cols, weight)
        return out.reshape(B, T_out, self.out_channels).transpose(1, 2)


def _conv_block(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(GemmConv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout), nn.Mish())


class FiLMResBlock1D(nn.Module):
    """conv-GN-Mish, FiLM(cond), conv-GN-Mish, plus a 1x1 residual projection. (B, Cin, T) -> (B, Cout, T)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.block1 = _conv_block(cin, cout, k, groups)
        self.block2 = _conv_block(cout, cout, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = GemmConv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def film_table(self, step_dim: int, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """This block's FiLM pre-activations for S diffusion steps at once: step embeddings (S, step_dim) and
        observation (B, cond_dim) -> (S, B, 2 * Cout).

        ``film(cat[step, cond]) = Mish(step) @ W_step^T + Mish(cond) @ W_cond^T + b`` (Mish is elementwise), so a
        chunk needs one product with each weight half instead of one with the whole matrix per step.
        """
        weight, bias = self.film[1].weight, self.film[1].bias
        obs = F.linear(self.film[0](cond), weight[:, step_dim:], bias)  # (B, 2C)
        steps = F.linear(self.film[0](step), weight[:, :step_dim])  # (S, 2C)
        return steps[:, None] + obs[None]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, film: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``cond``: the FiLM input (B, step_dim + cond_dim); or ``film``: its pre-activations (B, 2 * Cout) from
        :meth:`film_table`."""
        h = self.block1(x)
        if film is None:
            film = self.film(cond)
        scale, bias = film[..., None].chunk(2, dim=1)
        h = self.block2(torch.addcmul(bias, scale, h))
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
                GemmConv1d(cout, cout, 3, stride=2, padding=1) if not last else nn.Identity(),
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
                                   GemmConv1d(down_dims[0], action_dim, 1))

    def res_blocks(self) -> list[FiLMResBlock1D]:
        """Every FiLM block in forward order."""
        blocks = [b for level in self.down for b in level[:2]] + list(self.mid)
        return blocks + [b for level in self.up for b in level[:2]]

    def film_tables(self, timesteps: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """FiLM pre-activations of every block for the diffusion steps ``timesteps`` (S,) and conditioning ``cond``
        (B, L, d): a list (one per block, forward order) of (S, B, 2 * C_block). ``forward(..., film=[tab[s] for
        tab in tables])`` then equals ``forward(x, timesteps[s], cond)`` within float rounding, without the FiLM
        products (most of this U-Net's weights at batch 1) in every step."""
        step = self.step_embed(timesteps.reshape(-1))
        flat = cond.flatten(1)
        return [block.film_table(step.shape[1], step, flat) for block in self.res_blocks()]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | None, cond: torch.Tensor | None = None,
                film: list[torch.Tensor] | None = None) -> torch.Tensor:
        """eps (B, T, A) from ``sample`` (B, T, A), ``timestep`` (B,) and ``cond`` (B, L, d); or, instead of
        ``timestep`` and ``cond``, ``film``: this step's row of :meth:`film_tables` (list of (B, 2 * C_block))."""
        if film is None:
            if cond is None or timestep is None:
                raise ValueError("ConditionalUnet1D needs timestep and cond, or film")
            joint = torch.cat([self.step_embed(timestep), cond.flatten(1)], dim=-1)
            args = iter([{"cond": joint}] * len(self.res_blocks()))
        else:
            args = iter([{"film": f} for f in film])
        x = sample.transpose(1, 2)  # (B, A, T)
        skips = []  # outputs of the levels below the top one, consumed by the up path in reverse
        for res1, res2, down in self.down:
            x = res2(res1(x, **next(args)), **next(args))
            skips.append(x)
            x = down(x)
        skips.pop(0)  # the top level's output has no matching up level
        for res in self.mid:
            x = res(x, **next(args))
        for res1, res2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, **next(args)), **next(args)))
        return self.final(x).transpose(1, 2)


class FilmStep(nn.Module):
    """One denoising step of ``unet`` from precomputed FiLM terms, with tensor inputs only (what an export engine
    traces): ``forward(sample (B, T, A), *film)`` with ``film`` one (B, 2 * C_block) row of
    :meth:`ConditionalUnet1D.film_tables` per block -> eps (B, T, A). Holds ``unet`` itself (same parameters)."""

    def __init__(self, unet: ConditionalUnet1D) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, *film: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, None, film=list(film))
