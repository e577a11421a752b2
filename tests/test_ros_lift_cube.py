"""Closed loop through rosbridge on the MuJoCo lift_cube task vs. the direct simulated rollout on the same seeds.

The "policy" is the scripted lift_cube expert (privileged: it reads the simulator state of the robot-side env),
driven through the whole deployment path: images/joint states/ee pose as ROS messages over the rosbridge-v2 test
server, the fixed-rate control loop, the safety layer, and Float64MultiArray commands that the simulated robot
applies on its own 20 Hz clock (not in step with the controller, as a real robot). A policy trained by the suite
goes through the same path in test_ros_trained_policy.py.
"""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rosbridge_test_server import run_bridge_episodes
from s2robot.deploy.control_loop import CallablePolicy

pytestmark = pytest.mark.timeout(150)
SEEDS = (0, 1, 2, 3)
IMG = 48
RATE = 20.0
CFG_PATH = Path(__file__).resolve().parents[1] / "configs" / "robot" / "rosbridge_lift_cube.yaml"


def _direct(seed):
    from s2robot.envs import make_env
    from s2robot.envs.experts import make_expert

    env = make_env("lift_cube", image_size=IMG)
    obs, info = env.reset(seed=seed)
    expert = make_expert("lift_cube", env, seed=seed)
    steps = 0
    while True:
        obs, _, term, trunc, info = env.step(expert.act(obs))
        steps += 1
        if term or trunc:
            env.close()
            return bool(info["success"]), steps


def test_lift_cube_expert_through_bridge_matches_direct_simulation():
    from s2robot.envs import make_env
    from s2robot.envs.experts import make_expert

    direct = [_direct(s) for s in SEEDS]
    env = make_env("lift_cube", image_size=IMG)
    robot_cfg = {**OmegaConf.to_container(OmegaConf.load(CFG_PATH)), "image_size": [IMG, IMG]}
    seen: dict[int, list] = {}

    def make_policy(seed, sim):
        expert = make_expert("lift_cube", env, seed=seed)
        seen[seed] = []

        def act(obs):
            seen[seed].append(obs)
            with sim.state_lock:  # the privileged expert reads the robot-side simulator state
                return expert.act(obs)

        return CallablePolicy(act)

    def check_last_observation(seed, sim, report):
        assert seen[seed][0]["front_image"].shape == (IMG, IMG, 3) and seen[seed][0]["proprio"].shape == (9,)
        np.testing.assert_allclose(seen[seed][-1]["proprio"][:3], sim.obs["proprio"][:3], atol=0.05)

    results = run_bridge_episodes(env, robot_cfg, SEEDS, make_policy, rate_hz=RATE, on_episode=check_last_observation)
    bridged = [r["success"] for r in results]
    reports = [r["report"] for r in results]
    n_direct = sum(s for s, _ in direct)
    n_bridge = sum(bridged)
    print(f"lift_cube expert success: direct {n_direct}/{len(SEEDS)}, through rosbridge {n_bridge}/{len(SEEDS)}")
    assert n_direct >= len(SEEDS) - 1
    assert n_bridge >= n_direct - 1, (direct, bridged, [r.summary() for r in reports])
    assert all(r.commands > 5 and r.late_ticks <= r.steps // 4 for r in reports)
    assert all(r.holds.get("rejected", 0) == 0 for r in reports)
