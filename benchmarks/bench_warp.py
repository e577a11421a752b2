"""Batched MuJoCo Warp rollouts vs the CPU process-based backend: env-steps/s for N = 1 ... 4096 worlds.

One env step = action -> mocap/ctrl, ``n_substeps`` (50) physics steps, pose update, task success/score, and (with
cameras) rendering two 84x84 cameras of every world. Columns:

- ``physics``: WarpBatchEnv without cameras (env-steps/s = N x steps / wall);
- ``2 cams``: WarpBatchEnv with ``front`` + ``wrist`` at 84 px;
- ``render fps``: rendered camera frames/s of the batched renderer alone (refit BVH + render, graph replay).

On warp's CPU device each kernel runs on one core and cost grows linearly in N, so N is capped by
``--max-n-cpu`` (default 256: one step of 256 worlds takes seconds). On CPU the evaluator's process pool
(``s2robot.evaluation.vector_env.EnvPool``, one MuJoCo env per worker process) is measured in the same run.

    python benchmarks/bench_warp.py [--task lift_cube] [--ns 1,4,16,64,256,1024,4096] [--device auto]

Threads are pinned (1 BLAS/torch thread); figures on a shared machine are noisy.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

IMG = 84
CAMS = ("front", "wrist")


def _actions(n: int, k: int) -> torch.Tensor:
    """A fixed, gentle action pattern (N, 5): small circular moves with the gripper half closed."""
    t = np.arange(n) + k
    a = np.stack([0.01 * np.cos(t), 0.01 * np.sin(t), 0.005 * np.cos(0.5 * t), 0.05 * np.sin(t), np.zeros(n)], 1)
    return torch.as_tensor(a, dtype=torch.float32)


def _timed_steps(step, n: int, min_steps: int, min_time: float, sync) -> float:
    """Steps/s of ``step(k)`` after one warm-up call (graph capture), at least ``min_steps`` and ``min_time`` s."""
    step(0)
    sync()
    k, t0 = 0, time.perf_counter()
    while k < min_steps or time.perf_counter() - t0 < min_time:
        step(k + 1)
        k += 1
    sync()
    return n * k / (time.perf_counter() - t0)


def bench_warp(task: str, n: int, device: str, cameras, min_steps: int, min_time: float) -> tuple[float, float]:
    """(env-steps/s of the full env step, camera frames/s of render alone) for N worlds."""
    from s2robot.envs.warp_backend import WarpBatchEnv

    env = WarpBatchEnv(task, n, image_size=IMG, cameras=cameras, device=device)
    env.reset(np.arange(n))
    sps = _timed_steps(lambda k: env.step(_actions(n, k).to(env.device)), n, min_steps, min_time,
                       env.sim.synchronize)
    fps = float("nan")
    if cameras:
        fps = len(cameras) * _timed_steps(lambda k: env.sim.render(), n, min_steps, min_time / 2, env.sim.synchronize)
    env.close()
    return sps, fps


def bench_pool(task: str, n: int, cameras, min_steps: int, min_time: float) -> float:
    """env-steps/s of the evaluator's process pool (one MuJoCo env per worker), all envs stepped each call."""
    from s2robot.evaluation.vector_env import EnvPool, TaskEnvFactory

    pool = EnvPool(TaskEnvFactory(task, {"image_size": IMG, "cameras": tuple(cameras)}), n)
    try:
        idx = list(range(n))
        pool.reset(idx, list(range(n)))
        return _timed_steps(lambda k: pool.step(idx, _actions(n, k).numpy()), n, min_steps, min_time, lambda: None)
    finally:
        pool.close()


def bench_sequential(task: str, cameras, min_steps: int, min_time: float) -> float:
    """env-steps/s of one ``make_env`` env stepped in this process (the baseline when no pool is available)."""
    from s2robot.envs import make_env

    env = make_env(task, image_size=IMG, cameras=tuple(cameras))
    env.reset(seed=0)
    sps = _timed_steps(lambda k: env.step(_actions(1, k).numpy()[0]), 1, min_steps, min_time, lambda: None)
    env.close()
    return sps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="lift_cube")
    ap.add_argument("--ns", default="1,4,16,64,256,1024,4096")
    ap.add_argument("--device", default="auto", help="warp device: auto | cpu | cuda[:i]")
    ap.add_argument("--max-n-cpu", type=int, default=256, help="largest N run on warp's CPU device")
    ap.add_argument("--pool-ns", default="1,2", help="worker counts of the CPU process pool (CPU device only)")
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement (at least)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import s2robot.envs  # noqa: F401  (picks the headless GL backend before anything imports mujoco)
    from s2robot.device import resolve_device

    device = resolve_device(args.device)
    ns = [int(v) for v in args.ns.split(",")]
    skipped = [n for n in ns if device.type == "cpu" and n > args.max_n_cpu]
    ns = [n for n in ns if n not in skipped]
    import mujoco_warp
    import warp

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"task={args.task} device={device} gpu={gpu} cpus={os.cpu_count()} image={IMG}px cameras={','.join(CAMS)} "
          f"mujoco_warp={mujoco_warp.__version__} warp={warp.__version__}")
    print(f"\n{'backend':<26} {'N':>5} {'physics env-steps/s':>20} {'2 cams env-steps/s':>19} {'render fps':>11}")
    for n in ns:
        phys, _ = bench_warp(args.task, n, str(device), (), args.min_steps, args.min_time)
        cams, fps = bench_warp(args.task, n, str(device), CAMS, args.min_steps, args.min_time)
        print(f"{'warp (' + device.type + ', graph)':<26} {n:>5} {phys:>20.1f} {cams:>19.1f} {fps:>11.1f}", flush=True)
    if skipped:
        print(f"(N = {', '.join(map(str, skipped))} skipped on the CPU device: above --max-n-cpu={args.max_n_cpu})")
    if device.type == "cpu":
        seq_p = bench_sequential(args.task, (), args.min_steps, args.min_time)
        seq_c = bench_sequential(args.task, CAMS, args.min_steps, args.min_time)
        print(f"{'cpu sequential make_env':<26} {1:>5} {seq_p:>20.1f} {seq_c:>19.1f} {'':>11}", flush=True)
        try:
            for n in [int(v) for v in args.pool_ns.split(",")]:
                p = bench_pool(args.task, n, (), args.min_steps, args.min_time)
                c = bench_pool(args.task, n, CAMS, args.min_steps, args.min_time)
                print(f"{'cpu process pool (EnvPool)':<26} {n:>5} {p:>20.1f} {c:>19.1f} {'':>11}", flush=True)
        except ImportError as exc:
            print(f"(evaluator process pool not available: {exc})")


if __name__ == "__main__":
    main()
