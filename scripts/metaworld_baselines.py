"""Expert and random-policy success on Meta-World v3 tasks (the baseline rows of the README's Meta-World table).

    python scripts/metaworld_baselines.py pick-place-v3 [--expert-seeds 0 50] [--random-seeds 100000 50] [--out F]

Expert: Meta-World's scripted policy on seeds 0..49 (the collection seeds), read from the full state, no cameras.
Random: uniform actions in [-1, 1] through the batched evaluator (``s2robot.evaluation.evaluate``, seeded per
episode) on the evaluation seeds 100000..100049, without cameras (it ignores the images). An episode succeeds once
``info["success"]`` is reached within the task's ``max_episode_steps`` (500). Prints and appends one JSON line
per task: successes, episodes and 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


class RandomPolicy(torch.nn.Module):
    """Uniform random actions in [-1, 1]^A from each episode's generator (so results do not depend on batching)."""

    n_obs_steps = 1
    obs_keys = ["proprio"]

    def __init__(self, action_dim: int = 4):
        super().__init__()
        self.action_dim = action_dim

    def predict_action(self, obs, generators=None):
        rows = [torch.rand(1, 1, self.action_dim, generator=g) * 2 - 1 for g in generators]
        return torch.cat(rows)


def expert_success(task: str, seeds: range, max_steps: int) -> tuple[int, list[int]]:
    """(successes, episode lengths) of the scripted expert on ``seeds``."""
    from s2robot.envs import make_env
    from s2robot.envs.experts import make_expert

    env = make_env(task, cameras=(), max_episode_steps=max_steps)
    ok, lengths = 0, []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert = make_expert(task, env, seed)
            info, t = {}, 0
            while True:
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                t += 1
                if terminated or truncated:
                    break
            ok += bool(info.get("success"))
            lengths.append(t)
    finally:
        env.close()
    return ok, lengths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="+", help="Meta-World v3 task names, e.g. pick-place-v3")
    p.add_argument("--expert-seeds", nargs=2, type=int, default=[0, 50], metavar=("FIRST", "N"))
    p.add_argument("--random-seeds", nargs=2, type=int, default=[100000, 50], metavar=("FIRST", "N"))
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--n-envs", type=int, default=1)
    p.add_argument("--out", default=None, help="append one JSON line per task here")
    a = p.parse_args(argv)
    from s2robot.evaluation import evaluate
    from s2robot.evaluation.metrics import wilson_interval

    for name in a.tasks:
        task = name if name.startswith("metaworld/") else f"metaworld/{name}"
        t0 = time.perf_counter()
        first, n = a.expert_seeds
        ok, lengths = expert_success(task, range(first, first + n), a.max_steps)
        t1 = time.perf_counter()
        first_r, n_r = a.random_seeds
        summary = evaluate(RandomPolicy(), task=task, n_envs=a.n_envs, episodes=n_r, seed=first_r, device="cpu",
                           env_kwargs={"cameras": ()}, max_steps=a.max_steps, progress=False, n_videos=0)
        row = {"task": task, "expert": {"success": ok, "episodes": n, "seeds": [first, first + n - 1],
                                        "ci95": wilson_interval(ok, n), "mean_length": float(np.mean(lengths)),
                                        "wall_s": round(t1 - t0, 1)},
               "random": {"success": summary["n_success"], "episodes": n_r, "seeds": [first_r, first_r + n_r - 1],
                          "ci95": list(summary["success_ci95"]), "wall_s": round(time.perf_counter() - t1, 1)}}
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
