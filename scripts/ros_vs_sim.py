"""A trained policy closed-loop through rosbridge vs. the direct simulated evaluation, on the same seeds.

    python scripts/ros_vs_sim.py CHECKPOINT [--episodes 10] [--seed 100000] [--rate 10]

The robot is the policy's MuJoCo task served by the rosbridge-v2 test server (tests/rosbridge_test_server.py):
images, joint states and the end-effector pose go out as ROS messages on the robot's own clock; commands come back
through the fixed-rate control loop and the safety layer. The direct run is `s2robot.evaluation.evaluate` on the
same seeds. Diffusion sampling draws differ between the two paths, so compare within the binomial noise.
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
    args = ap.parse_args()

    import s2robot
    from rosbridge_test_server import RosbridgeTestServer, SimRobotServer
    from s2robot.envs import make_env
    from s2robot.evaluation import evaluate
    from s2robot.evaluation.metrics import wilson_interval
    from s2robot.ros.control_loop import ControlLoop, LoopConfig, TorchPolicy
    from s2robot.ros.robot import RobotConfig
    from s2robot.ros.rosbridge import RosbridgeRobot
    from s2robot.ros.safety import SafetyFilter, Watchdog
    from s2robot.training.checkpoint import read_config, resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    task = OmegaConf.to_container(read_config(ckpt))["task"]
    size = int(task["image_size"])
    policy = s2robot.load_policy(ckpt)

    direct = evaluate(policy, task=task["name"], n_envs=1, episodes=args.episodes, seed=args.seed, device="cpu",
                      env_kwargs={"image_size": size}, n_videos=0, progress=False)
    d_succ = [bool(e["success"]) for e in direct["episodes"]]

    env = make_env(task["name"], image_size=size)
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "robot" / "rosbridge_lift_cube.yaml"))
    if args.raw_images:
        raw["cameras"] = {c: {"topic": f"/{c}/image_raw", "type": "sensor_msgs/Image"} for c in raw["cameras"]}
    b_succ, late = [], 0
    with RosbridgeTestServer(max_lifetime_s=60 + 20 * args.episodes) as server:
        cfg = RobotConfig.from_dict({**raw, "port": server.port, "rate_hz": args.rate, "image_size": [size, size]})
        sim = SimRobotServer(server, env, cfg, rate_hz=args.rate, setpoint_fn=lambda: env.unwrapped.target_pos,
                             hold_action=np.array([0, 0, 0, 0, -1], np.float32))
        robot = RosbridgeRobot(cfg)
        robot.connect()
        try:
            for i in range(args.episodes):
                sim.reset(seed=args.seed + i, max_steps=env.spec.max_episode_steps)
                t_reset = time.monotonic()
                loop = ControlLoop(robot, TorchPolicy(policy), SafetyFilter(cfg.action, cfg.safety, 1 / args.rate),
                                   Watchdog(1 / args.rate, cfg.safety.stale_periods),
                                   LoopConfig(rate_hz=args.rate, max_steps=env.spec.max_episode_steps + 10),
                                   success_fn=lambda: sim.success)
                sim.start()
                rep = loop.run_episode(start_after=t_reset)
                sim.stop()
                b_succ.append(bool(sim.success))
                late += rep.late_ticks
        finally:
            sim.close()
            robot.close()
    for name, s in (("direct simulation", d_succ), ("through rosbridge", b_succ)):
        lo, hi = wilson_interval(sum(s), len(s))
        print(f"{name:18s}: {sum(s)}/{len(s)} = {100 * np.mean(s):.0f}% (95% CI {100 * lo:.0f}-{100 * hi:.0f}%)  "
              f"per seed {''.join('x' if v else '.' for v in s)}")
    print(f"late ticks through the bridge: {late}")


if __name__ == "__main__":
    main()
