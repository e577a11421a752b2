"""Tokens "as the feature cache stores them": the one definition shared by the cache and a policy's online path.

Both ``s2robot.datasets.feature_cache`` (writing ``features/<key>``) and ``s2robot.policies.conditioning`` (encoding
live frames at evaluation or deployment) turn encoder tokens into what a policy consumes with
:func:`tokens_as_cached`, so a policy sees the same numbers for the same frame on either path:

1. area-pool the patch grid to ``pool_grid`` (prefix tokens kept), when the cache pooled it;
2. round to the cache dtype (float16 by default);
3. project the channels with a fixed linear reduction (PCA fitted at cache time, :class:`TokenProjection`), then
   round again, when the cache stored reduced tokens.

This module sits below ``datasets`` and ``policies`` (it imports only torch), so both may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["pool_tokens", "TokenProjection", "fit_pca", "tokens_as_cached", "CACHE_DTYPES"]

CACHE_DTYPES = ("float16", "bfloat16", "float32")


def pool_tokens(tokens: torch.Tensor, num_prefix: int, grid: int, pool_grid: int | None) -> torch.Tensor:
    """Area-pool the patch grid of (B, num_prefix + grid², D) tokens to pool_grid², keeping prefix tokens first.

    Returns (B, num_prefix + pool_grid², D). ``grid % pool_grid == 0`` gives exact non-overlapping area means;
    otherwise adaptive average pooling (overlapping windows).
    """
    if pool_grid is None or pool_grid == grid:
        return tokens
    if not 1 <= pool_grid <= grid:
        raise ValueError(f"pool_grid must be in [1, {grid}] (the encoder grid), got {pool_grid}")
    b, n, d = tokens.shape
    if n != num_prefix + grid * grid:
        raise ValueError(f"tokens have N={n}, expected num_prefix + grid² = {num_prefix + grid * grid}")
    prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
    grid_map = patches.transpose(1, 2).reshape(b, d, grid, grid)
    pooled = F.adaptive_avg_pool2d(grid_map, pool_grid).flatten(2).transpose(1, 2)
    return torch.cat([prefix, pooled], dim=1)


@dataclass
class TokenProjection:
    """A fixed channel reduction ``y = (x - mean) @ components.T``: mean (D,), components (K, D), float32."""

    mean: torch.Tensor
    components: torch.Tensor

    def __post_init__(self) -> None:
        self.mean = self.mean.float().reshape(-1)
        self.components = self.components.float()
        if self.components.dim() != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise ValueError(f"projection components must be (K, {self.mean.shape[0]}), got "
                             f"{tuple(self.components.shape)}")

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., K) in float32."""
        mean, comp = self.mean.to(tokens.device), self.components.to(tokens.device)
        return (tokens.float() - mean) @ comp.T


def fit_pca(samples: torch.Tensor, dim: int) -> tuple[TokenProjection, float]:
    """PCA of (M, D) token samples -> (projection onto the top ``dim`` components, explained variance ratio).

    Deterministic (eigendecomposition of the float64 covariance); component signs are fixed so that each
    component's largest-magnitude entry is positive.
    """
    x = samples.double()
    if x.dim() != 2 or not 1 <= dim <= x.shape[1]:
        raise ValueError(f"fit_pca needs (M, D) samples and 1 <= dim <= D, got {tuple(x.shape)} and dim={dim}")
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)[:dim]
    comp = evecs[:, order].T  # (dim, D)
    sign = torch.sign(comp.gather(1, comp.abs().argmax(1, keepdim=True)))
    comp = comp * sign
    explained = float(evals[order].sum() / evals.clamp_min(0).sum())
    return TokenProjection(mean.float(), comp.float()), explained


def tokens_as_cached(tokens: torch.Tensor, *, num_prefix: int, grid: int, pool_grid: int | None = None,
                     projection: TokenProjection | None = None, dtype: str = "float16") -> torch.Tensor:
    """Encoder tokens (B, N, D) -> what the feature cache stores, in ``dtype`` (see the module docstring).

    Returns (B, N', D') in ``dtype``: N' = num_prefix + pool_grid² (or N), D' = projection.out_dim (or D).
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
    dt = getattr(torch, dtype)
    out = pool_tokens(tokens.float(), num_prefix, grid, pool_grid).to(dt)
    if projection is not None:
        out = projection(out.float()).to(dt)
    return out
