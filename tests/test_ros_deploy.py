"""``s2robot deploy``: a tiny random checkpoint on the sim robot (with recording) and a rosbridge dry run."""

import json
import re
import time

import numpy as np
import pytest
import torch

from policy_testlib import TINY_ENCODER, TINY_POLICIES
from rosbridge_test_server import RosbridgeTestServer, SimRobotServer
from s2robot.cli import main

pytestmark = pytest.mark.timeout(150)
IMG = 32


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A random-weight bc_mlp checkpoint with lift_cube's shapes (5-dim actions, 9-dim proprio, 2 cameras)."""
    from s2robot.datasets.normalizer import Normalizer
    from s2robot.encoders import build_encoder
    from s2robot.policies import build_policy
    from s2robot.policies.base import ShapeMeta
    from s2robot.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    enc = build_encoder(**TINY_ENCODER)
    meta = ShapeMeta(cameras=["front", "wrist"], proprio_dim=9, action_dim=5, image_shape=[IMG, IMG, 3],
                     token_shape=[enc.num_tokens, enc.out_dim], num_prefix=enc.num_prefix)
    rng = np.random.default_rng(0)
    act = np.concatenate([rng.uniform(-0.03, 0.03, (64, 4)), rng.uniform(-1, 1, (64, 1))], 1)
    norm = Normalizer().fit({"action": act, "proprio": rng.normal(size=(64, 9))})
    policy = build_policy(TINY_POLICIES["bc_mlp"], meta, norm, enc)
    cfg = {"policy": TINY_POLICIES["bc_mlp"], "shape_meta": meta.to_dict(), "encoder": TINY_ENCODER}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_0", policy, cfg, step=0, epoch=0)


def test_deploy_sim_robot_records_episodes(tiny_ckpt, tmp_path, capsys):
    from s2robot.datasets.store import EpisodeStore

    rec = tmp_path / "deployed.zarr"
    rc = main(["deploy", f"checkpoint={tiny_ckpt}", "robot=sim_lift_cube", "episodes=2", "max_steps=6",
               f"record={rec}", f"out={tmp_path / 'out'}", "device=cpu", "temporal_ensemble=0.1"])
    assert rc == 0
    assert "summary in" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "deploy_summary.json").read_text())
    assert len(summary["episodes"]) == 2 and all(e["commands"] >= 5 for e in summary["episodes"])
    store = EpisodeStore.open(rec)
    assert store.n_episodes == 2
    ep = store.get_episode(0)
    assert ep["front_image"].shape[1:] == (IMG, IMG, 3) and ep["proprio"].shape[1:] == (9,)
    assert ep["action"].shape[1:] == (5,) and np.isfinite(ep["action"]).all()
    assert np.all(np.abs(ep["action"][:, 4]) <= 1.0)
    store.close()


def test_deploy_rejects_mismatched_robot(tiny_ckpt, tmp_path, capsys):
    assert main(["deploy", f"checkpoint={tiny_ckpt}", "robot=ur_ros2_joint_example", f"out={tmp_path}",
                 "device=cpu"]) == 1  # a user error: one line on stderr
    assert re.search(r"^s2robot deploy: .*policy needs cameras .*missing", capsys.readouterr().err)


def test_deploy_rosbridge_dry_run_publishes_shadow_only(tiny_ckpt, tmp_path):
    from omegaconf import OmegaConf

    from s2robot.envs import make_env
    from s2robot.ros.robot import RobotConfig

    env = make_env("lift_cube", image_size=IMG)
    with RosbridgeTestServer(max_lifetime_s=100) as server:
        from s2robot.cli import compose

        rcfg = RobotConfig.from_dict(OmegaConf.to_container(
            compose("deploy", ["robot=rosbridge_lift_cube", f"robot.port={server.port}"]).robot))
        sim = SimRobotServer(server, env, rcfg, rate_hz=20, setpoint_fn=lambda: env.unwrapped.target_pos)
        sim.reset(seed=0, max_steps=1000)
        sim.start()
        try:
            rc = main(["deploy", f"checkpoint={tiny_ckpt}", "robot=rosbridge_lift_cube", f"robot.port={server.port}",
                       "dry_run=true", "max_steps=20", f"out={tmp_path}", "device=cpu"])
        finally:
            sim.close()
        assert rc == 0
        time.sleep(0.2)
        shadow = server.messages("/s2robot/shadow/s2robot/command")
        assert len(shadow) >= 5 and server.messages("/s2robot/command") == []
        data = np.array([m["data"] for _, m in shadow])
        assert data.shape[1] == 5 and np.isfinite(data).all()
        lo, hi = np.array(rcfg.safety.low), np.array(rcfg.safety.high)
        assert np.all((data[:, :3] >= lo - 1e-6) & (data[:, :3] <= hi + 1e-6))
    summary = json.loads((tmp_path / "deploy_summary.json").read_text())
    assert summary["dry_run"] is True and summary["episodes"][0]["commands"] >= 5
