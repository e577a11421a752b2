"""A trained policy closed-loop through rosbridge vs. the direct simulated evaluation, on the same seeds.

    python scripts/ros_vs_sim.py CHECKPOINT [--episodes 10] [--seed 100000] [--rate 10] [--raw-images] [--sync]

The robot is the policy's MuJoCo task served by the rosbridge-v2 test server (tests/rosbridge_test_server.py):
images, joint states and the end-effector pose go out as ROS messages on the robot's own clock; commands come back
through the fixed-rate control loop and the safety layer. The direct run is `s2robot.evaluation.evaluate` on the
same seeds. Diffusion sampling draws differ between the two paths, so compare within the binomial noise. On its
own clock the robot keeps moving while the policy thinks (as a real one does); ``--sync`` puts it on sim time
(one step per command), which isolates what the bridge itself changes (message encoding, safety layer, timing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--rate", type=float, default=10.0, help="robot clock and control loop rate (Hz)")
    ap.add_argument("--raw-images", action="store_true", help="every camera as sensor_msgs/Image rgb8 (no JPEG)")
    ap.add_argument("--sync", action="store_true",
                    help="the simulated robot steps once per command (sim time) instead of on its own clock")
    args = ap.parse_args()

    import s2robot
    from rosbridge_test_server import run_bridge_episodes
    from s2robot.deploy.control_loop import TorchPolicy
    from s2robot.envs import make_env
    from s2robot.evaluation import evaluate
    from s2robot.evaluation.metrics import wilson_interval
    from s2robot.policies.loading import read_config, resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    task = OmegaConf.to_container(read_config(ckpt))["task"]
    size = int(task["image_size"])
    policy = s2robot.load_policy(ckpt)
    seeds = [args.seed + i for i in range(args.episodes)]

    direct = evaluate(policy, task=task["name"], n_envs=1, episodes=args.episodes, seed=args.seed, device="cpu",
                      env_kwargs={"image_size": size}, n_videos=0, progress=False)
    d_succ = [bool(e["success"]) for e in direct["episodes"]]

    env = make_env(task["name"], image_size=size)
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "robot" / "rosbridge_lift_cube.yaml"))
    if args.raw_images:
        raw["cameras"] = {c: {"topic": f"/{c}/image_raw", "type": "sensor_msgs/Image"} for c in raw["cameras"]}
    raw["image_size"] = [size, size]
    # In step with the simulator, chunks are replanned when the last one is used up, as the direct evaluator does.
    loop_kwargs = {"replan_margin": 0, "max_wait": 0.9} if args.sync else {}
    t = time.monotonic()
    results = run_bridge_episodes(env, raw, seeds, lambda seed, sim: TorchPolicy(policy), rate_hz=args.rate,
                                  sync=args.sync, loop_kwargs=loop_kwargs)
    b_succ = [r["success"] for r in results]
    late = sum(r["report"].late_ticks for r in results)
    holds = sum(r["hold_steps"] for r in results)
    print(f"bridge episodes took {time.monotonic() - t:.0f} s")
    for name, s in (("direct simulation", d_succ), ("through rosbridge", b_succ)):
        lo, hi = wilson_interval(sum(s), len(s))
        print(f"{name:18s}: {sum(s)}/{len(s)} = {100 * np.mean(s):.0f}% (95% CI {100 * lo:.0f}-{100 * hi:.0f}%)  "
              f"per seed {''.join('x' if v else '.' for v in s)}")
    agree = sum(a == b for a, b in zip(d_succ, b_succ))
    print(f"same outcome on {agree}/{len(seeds)} seeds; late ticks through the bridge: {late}"
          + (f"; simulator steps without a command in time: {holds}" if args.sync else ""))


if __name__ == "__main__":
    main()
