"""``python -m s2robot.envs.expert_table --episodes 100``: scripted-expert success table for every task.

Runs each task's expert on seeds ``seed .. seed+episodes-1`` without rendering (state-based experts need no
images) and prints a markdown table: success rate, mean final score, mean episode length, wall time.
``--jobs`` runs tasks in parallel processes (keep it small on a shared CPU).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def evaluate_expert(task: str, episodes: int = 100, seed: int = 0,
                    push_t_threshold: float | None = None) -> dict:
    """Success rate, mean final score and mean length of ``task``'s expert over ``episodes`` seeded episodes."""
    from s2robot.envs import make_env
    from s2robot.envs.experts import make_expert
    from s2robot.envs.tasks import get_task

    env = make_env(task, cameras=())
    if push_t_threshold is not None and task == "push_t":
        env.unwrapped.task = type(get_task(task))(success_threshold=float(push_t_threshold))
    successes, scores, lengths = [], [], []
    t0 = time.perf_counter()
    for k in range(episodes):
        expert = make_expert(task, env, seed=seed + k)
        obs, info = env.reset(seed=seed + k)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(expert.act(obs))
            done = term or trunc
        successes.append(info["success"])
        scores.append(info["score"])
        lengths.append(env.unwrapped.episode_steps)
    env.close()
    return {"task": task, "episodes": episodes, "success": float(np.mean(successes)),
            "score": float(np.mean(scores)), "length": float(np.mean(lengths)),
            "max_steps": int(get_task(task).max_episode_steps), "seconds": time.perf_counter() - t0,
            "failed_seeds": [seed + k for k, s in enumerate(successes) if not s]}


def format_table(rows: list[dict]) -> str:
    lines = ["| task | episodes | expert success | mean final score | mean length (max) | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['episodes']} | {100 * r['success']:.0f}% | {r['score']:.3f} | "
                     f"{r['length']:.1f} ({r['max_steps']}) | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from s2robot.envs import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="*", default=sorted(TASKS))
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (one task each)")
    p.add_argument("--push-t-threshold", type=float, default=None,
                   help="evaluate push_t at another coverage threshold (e.g. 0.95, Diffusion Policy's)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = max(1, min(args.jobs, len(args.tasks)))
    call = [(t, args.episodes, args.seed, args.push_t_threshold) for t in args.tasks]
    if jobs == 1:
        rows = [evaluate_expert(*c) for c in call]
    else:
        with ProcessPoolExecutor(jobs) as pool:
            rows = list(pool.map(evaluate_expert, *zip(*call)))
    print(format_table(rows))
    for r in rows:
        if r["failed_seeds"]:
            print(f"{r['task']}: failed seeds {r['failed_seeds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
