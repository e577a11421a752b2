"""Time the demo's diffusion U-Net training step at the current thread setting (synthetic cached tokens).

    for t in 1 2 1 2; do OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t python scripts/bench_threads.py 20; done

Batch 64, two cameras of 9 x 2560 tokens (MobileNetV2 S2 (1, 2) at 96 px, as the demo caches), proprio 9, action 5;
the policy is configs/demo.yaml's. Prints ms per step (after 3 warm-up steps).
"""

from __future__ import annotations

import os
import sys
import time

import torch
from omegaconf import OmegaConf

from s2robot.cli import compose
from s2robot.policies.normalizer import Normalizer
from s2robot.policies import ShapeMeta, build_policy


def main(steps: int) -> float:
    pcfg = OmegaConf.to_container(compose("demo").policy, resolve=True)
    meta = ShapeMeta(cameras=["front", "wrist"], proprio_dim=9, action_dim=5, image_shape=[96, 96, 3],
                     token_shape=[9, 2560], num_prefix=0)
    g = torch.Generator().manual_seed(0)
    norm = Normalizer().fit({"action": torch.randn(500, 5, generator=g), "proprio": torch.randn(500, 9, generator=g)})
    torch.manual_seed(0)
    policy = build_policy(pcfg, meta, norm, None)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-4)
    b, t, h = 64, policy.n_obs_steps, policy.horizon
    batch = {f"{c}_tokens": torch.randn(b, t, 9, 2560, generator=g) for c in ("front", "wrist")}
    batch["proprio"] = torch.randn(b, t, 9, generator=g)
    batch["action"] = torch.randn(b, h, 5, generator=g)

    def step() -> None:
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} torch threads={torch.get_num_threads()}: "
          f"{dt * 1000:.0f} ms/step ({1 / dt:.2f} steps/s)")
    return dt


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
