"""Env throughput per task on one CPU core: physics steps/s, env steps/s without rendering, and with the two
cameras (front + wrist) at 84x84 and 224x224. Env steps are 10 Hz control steps (50 physics substeps each).

    python benchmarks/bench_envs.py [--seconds 2] [--tasks lift_cube push_t]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if hasattr(os, "sched_setaffinity"):  # one core
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import time  # noqa: E402

import numpy as np  # noqa: E402

from s2robot.envs import TASKS, make_env  # noqa: E402


def _rate(fn, seconds: float) -> float:
    fn()  # warm-up (renderer creation, first frame)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_task(task: str, seconds: float) -> dict:
    import mujoco

    out = {}
    env = make_env(task, cameras=())
    env.reset(seed=0)
    m, d = env.unwrapped.model, env.unwrapped.data
    out["physics"] = _rate(lambda: mujoco.mj_step(m, d), seconds)
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high

    def stepper(e):
        def step():
            _, _, term, trunc, _ = e.step(rng.uniform(low, high).astype(np.float32))
            if term or trunc:
                e.reset()
        return step

    env.reset(seed=0)
    out["env_norender"] = _rate(stepper(env), seconds)
    env.close()
    for size in (84, 224):
        env = make_env(task, image_size=size, cameras=("front", "wrist"))
        env.reset(seed=0)
        out[f"env_{size}"] = _rate(stepper(env), seconds)
        env.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--tasks", nargs="*", default=sorted(TASKS))
    args = p.parse_args()
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}  one core  (env step = 50 physics substeps at 2 ms)")
    print("| task | physics steps/s | env steps/s (no render) | env steps/s 2 cams 84x84 | env steps/s 2 cams 224x224 |"
          " render share @224 |")
    print("|---|---:|---:|---:|---:|---:|")
    for task in args.tasks:
        r = bench_task(task, args.seconds)
        share = 1 - r["env_224"] / r["env_norender"]
        print(f"| {task} | {r['physics']:,.0f} | {r['env_norender']:,.0f} | {r['env_84']:,.0f} | "
              f"{r['env_224']:,.0f} | {100 * share:.0f}% |")


if __name__ == "__main__":
    main()
