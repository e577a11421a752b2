"""ROS bridge benchmark: achieved loop rate, tick jitter and observation-to-command latency at 10 Hz and 30 Hz.

Against the rosbridge-v2 test server on loopback (tests/rosbridge_test_server.py, run in a separate process), with a
simulated robot that publishes two 96x96 cameras (one sensor_msgs/Image rgb8, one CompressedImage jpeg), a JointState and a PoseStamped
at the control rate, and a cheap policy (so the figures are the bridge + loop, not the network model).
Latency = observation capture stamp -> command published (decode, resize, policy, safety, JSON, send).

    python benchmarks/bench_ros.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402

from rosbridge_test_server import FAKE_ROBOT_CFG, FakeReachEnv, RosbridgeTestServer, SimRobotServer  # noqa: E402
from s2robot.deploy.control_loop import CallablePolicy, ControlLoop, LoopConfig  # noqa: E402
from s2robot.deploy.safety import SafetyFilter, Watchdog  # noqa: E402
from s2robot.ros.robot_config import RobotConfig  # noqa: E402
from s2robot.ros.rosbridge import RosbridgeRobot  # noqa: E402


def _serve(rate: float, seconds: float, image: int, port_q, stop_evt) -> None:
    """Robot side, in its own process (so its JSON/base64/jpeg work does not share the client's GIL)."""
    with RosbridgeTestServer(max_lifetime_s=seconds + 60) as server:
        cfg = RobotConfig.from_dict({**FAKE_ROBOT_CFG, "port": server.port, "rate_hz": rate})
        env = FakeReachEnv(size=image, max_delta=0.002)  # slow motion: the episode never ends early
        sim = SimRobotServer(server, env, cfg, rate_hz=rate)
        sim.reset(seed=0, max_steps=10**6)
        sim.start()
        port_q.put(server.port)
        stop_evt.wait(seconds + 60)
        sim.close()


def bench(rate: float, seconds: float, image: int = 96) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port_q, stop_evt = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(rate, seconds, image, port_q, stop_evt), daemon=True)
    proc.start()
    try:
        port = port_q.get(timeout=60)
        cfg = RobotConfig.from_dict({**FAKE_ROBOT_CFG, "port": port, "rate_hz": rate, "image_size": [96, 96]})
        robot = RosbridgeRobot(cfg)
        robot.connect()
        goal = np.array([0.0, 0.0, 0.3])
        policy = CallablePolicy(lambda obs: np.array([*np.clip(goal - obs["proprio"][:3], -0.002, 0.002), 0.0],
                                                     np.float32))
        loop = ControlLoop(robot, policy, SafetyFilter(cfg.action, cfg.safety, 1 / rate),
                           Watchdog(1 / rate, cfg.safety.stale_periods),
                           LoopConfig(rate_hz=rate, max_steps=int(seconds * rate), stop_on_success=False))
        try:
            rep = loop.run_episode(start_after=time.monotonic())
        finally:
            robot.close()
    finally:
        stop_evt.set()
        proc.join(timeout=30)
    s = rep.summary()
    return {"rate": rate, **{k: s[k] for k in ("rate_hz", "jitter_ms", "tick_error_p99_ms", "latency_ms_p50",
                                                "latency_ms_p99", "tick_compute_ms_p50", "tick_compute_ms_p99", "late_ticks",
                                                "commands", "steps")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    rows = [bench(r, args.seconds) for r in (10.0, 30.0)]
    print(f"ROS bridge loop on loopback ({args.seconds:.0f} s per rate, 2 cameras 96x96, cheap policy)")
    hdr = ("target Hz", "achieved Hz", "jitter ms", "tick err p99", "obs->cmd p50", "obs->cmd p99", "tick->cmd p50",
           "tick->cmd p99", "late", "cmds/ticks")
    print(" | ".join(hdr))
    for r in rows:
        vals = (f"{r['rate']:.0f}", f"{r['rate_hz']:.2f}", f"{r['jitter_ms']:.2f}", f"{r['tick_error_p99_ms']:.2f}",
                f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p99']:.1f}", f"{r['tick_compute_ms_p50']:.1f}",
                f"{r['tick_compute_ms_p99']:.1f}", f"{r['late_ticks']}", f"{r['commands']}/{r['steps']}")
        print(" | ".join(v.rjust(len(h)) for v, h in zip(vals, hdr)))
    print(f"obs->cmd p50 ratio 30 Hz / 10 Hz: {rows[1]['latency_ms_p50'] / rows[0]['latency_ms_p50']:.2f}; "
          "obs->cmd = sampling phase (robot and loop clocks are independent, up to one period) + tick->cmd "
          "(decode, resize, policy hand-off, safety, JSON, send)")


if __name__ == "__main__":
    main()
