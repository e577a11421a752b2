"""AdamW (fused kernel) with decoupled weight decay on weight matrices only, and a warm-up + cosine (or constant) LR schedule
from ``diffusers.optimization.get_scheduler``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from diffusers.optimization import get_scheduler
from torch import nn

__all__ = ["OptimConfig", "build_optimizer", "build_lr_scheduler"]

NO_DECAY_LEAVES = {"pos", "queries", "camera_embed", "time_pos", "cond_pos"}  # learned embeddings
SCHEDULERS = ("cosine", "constant_with_warmup", "linear", "constant")


@dataclass
class OptimConfig:
    """``optim:`` section of ``configs/train.yaml``."""

    lr: float = 3e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_steps: int = 100

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler={self.scheduler!r} is not one of {SCHEDULERS}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        self.betas = [float(b) for b in self.betas]


def build_optimizer(named_params: list[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay applies to >= 2-D weights, not to biases, norms, embeddings or learned queries."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_LEAVES:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel (CPU and CUDA): about 10x faster than the per-tensor loop on CPU
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """Warm-up then the named schedule over ``total_steps`` (a ``LambdaLR``; its state is JSON-serialisable).

    Warns when the warm-up is not shorter than the run (the learning rate would never reach ``optim.lr``)."""
    if cfg.warmup_steps >= total_steps > 0:
        warnings.warn(
            f"optim.warmup_steps={cfg.warmup_steps} is not shorter than the run (train.steps={total_steps}): the "
            f"learning rate never reaches optim.lr={cfg.lr}; pass e.g. optim.warmup_steps={max(0, total_steps // 10)}",
            UserWarning, stacklevel=2,
        )
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
