"""``s2robot deploy``: a tiny random checkpoint on the sim robot (with recording) and a rosbridge dry run."""

import json
import re
import time
from pathlib import Path

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
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_0")


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory):
    """The same with every weight NaN: a policy that only emits NaN."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("nan_ckpt") / "step_0", nan=True)


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory):
    """A random-weight diffusion U-Net checkpoint (horizon 8, n_obs_steps 2, 4-action chunks) with the same shapes."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("dp_ckpt") / "step_0", policy_name="diffusion_unet")


def _tiny_checkpoint(path, nan=False, policy_name="bc_mlp"):
    from s2robot.encoders import build_encoder
    from s2robot.policies import build_policy
    from s2robot.policies.base import ShapeMeta
    from s2robot.policies.normalizer import Normalizer
    from s2robot.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    enc = build_encoder(**TINY_ENCODER)
    meta = ShapeMeta(cameras=["front", "wrist"], proprio_dim=9, action_dim=5, image_shape=[IMG, IMG, 3],
                     token_shape=[enc.num_tokens, enc.out_dim], num_prefix=enc.num_prefix)
    rng = np.random.default_rng(0)
    act = np.concatenate([rng.uniform(-0.03, 0.03, (64, 4)), rng.uniform(-1, 1, (64, 1))], 1)
    norm = Normalizer().fit({"action": act, "proprio": rng.normal(size=(64, 9))})
    policy = build_policy(TINY_POLICIES[policy_name], meta, norm, enc)
    if nan:
        with torch.no_grad():
            for p in policy.parameters():
                if p.requires_grad:
                    p.fill_(float("nan"))
    cfg = {"policy": TINY_POLICIES[policy_name], "shape_meta": meta.to_dict(), "encoder": TINY_ENCODER}
    return save_checkpoint(path, policy, cfg, step=0, epoch=0)


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


def test_deploy_rejects_mismatched_robot(tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match=r"^s2robot deploy: policy needs cameras .*missing"):
        main(["deploy", f"checkpoint={tiny_ckpt}", "robot=ur_ros2_joint_example", f"out={tmp_path}",
              "device=cpu"])


def test_deploy_rosbridge_dry_run_publishes_shadow_only(tiny_ckpt, tmp_path):
    from omegaconf import OmegaConf

    from s2robot.envs import make_env
    from s2robot.ros.robot_config import RobotConfig

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


class LiftRobot:
    """lift_cube served as a rosbridge robot (rosbridge_lift_cube.yaml's topics) on a test server."""

    def __init__(self, overrides=()):
        from omegaconf import OmegaConf

        from s2robot.cli import compose
        from s2robot.envs import make_env
        from s2robot.ros.robot_config import RobotConfig

        self.env = make_env("lift_cube", image_size=IMG)
        self.server = RosbridgeTestServer(max_lifetime_s=100).start()
        self.cfg = RobotConfig.from_dict(OmegaConf.to_container(compose(
            "deploy", ["robot=rosbridge_lift_cube", f"robot.port={self.server.port}", *overrides]).robot))
        self.sim = SimRobotServer(self.server, self.env, self.cfg, rate_hz=20,
                                  setpoint_fn=lambda: self.env.unwrapped.target_pos)
        self.sim.reset(seed=0, max_steps=100_000)
        self.sim.start()

    def published(self):
        return {t: len(m) for t, m in self.server.received.items() if m}

    def close(self):
        self.sim.close()
        self.server.stop()


@pytest.fixture
def lift_robot():
    robots = []

    def make(*overrides):
        robots.append(LiftRobot(overrides))
        return robots[-1]

    yield make
    for r in robots:
        r.close()


def _deploy(ckpt, tmp_path, *args):
    return main(["deploy", f"checkpoint={ckpt}", f"out={tmp_path}", "device=cpu", *args])


def test_bad_values_fail_before_connecting_with_one_line(tiny_ckpt, tmp_path):
    """Nothing listens on port 1: any attempt to connect would fail differently (exit 3), not with these lines."""
    cases = [("robot.rate_hz=fast", r"robot.rate_hz='fast': expected a number$"),
             ("robot.secure=yes", r"robot.secure='yes': expected true or false$"),
             ("robot.estop_topic=5", r"robot.estop_topic=5: expected a string or null$"),
             ("robot.gripper=abc", r"robot.gripper='abc': expected a mapping"),
             ("robot.shadow_prefix=/", r"robot.shadow_prefix='/': expected a namespace"),
             ("robot.safety.max_delta=[0.1,0.2]", r"robot.safety.max_delta=\[0.1, 0.2\]: expected one number or 3"),
             ("episodes=abc", r"episodes='abc': expected an integer$"),
             ("dry_run=yes", r"dry_run='yes': expected true or false$"),
             ("rate_hz=fast", r"rate_hz='fast': expected a number or null$"),
             ("num_inference_steps=0", r"num_inference_steps=0: expected an integer >= 1 or null$"),
             ("compile_denoiser=fast", r"compile_denoiser='fast': expected true or false$")]
    for ov, msg in cases:
        with pytest.raises(SystemExit, match=r"^s2robot deploy: " + msg) as e:
            _deploy(tiny_ckpt, tmp_path, "robot=rosbridge_lift_cube", "robot.port=1", ov)
        assert "\n" not in str(e.value.code), ov
    with pytest.raises(SystemExit, match=r"^s2robot deploy: num_inference_steps=3: only diffusion policies take "
                                         r"denoising steps; this checkpoint holds a BCPolicy$"):
        _deploy(tiny_ckpt, tmp_path, "robot=sim_lift_cube", "num_inference_steps=3")
    with pytest.raises(SystemExit, match=r"^s2robot deploy: compile_denoiser=true: only diffusion policies have a "
                                         r"denoiser to compile; this checkpoint holds a BCPolicy$"):
        _deploy(tiny_ckpt, tmp_path, "robot=sim_lift_cube", "compile_denoiser=true")
    with pytest.raises(SystemExit, match=r"^s2robot deploy: engine='onnx' is not one of \('auto', 'torch', 'fused', "
                                         r"'openvino'\)$"):
        _deploy(tiny_ckpt, tmp_path, "robot=sim_lift_cube", "engine=onnx")
    with pytest.raises(SystemExit, match=r"^s2robot deploy: engine='fused' supports the torchvision CNN trunks"):
        _deploy(tiny_ckpt, tmp_path, "robot=sim_lift_cube", "engine=fused")  # the tiny checkpoint's encoder: a ViT
    with pytest.raises(SystemExit, match=r"^s2robot deploy: checkpoint=\S*missing device=cpu: checkpoint not found"):
        _deploy(tmp_path / "missing", tmp_path, "robot=sim_lift_cube")
    assert not (tmp_path / "deploy_summary.json").exists()


def test_deploy_sets_a_diffusion_policys_chunk_length(diffusion_ckpt, tmp_path, monkeypatch):
    """``n_action_steps=K`` lets a diffusion policy return up to horizon - n_obs_steps + 1 actions per chunk (7 here,
    beyond its trained 4): every chunk the control loop gets holds 7 actions; K = 8 is one line."""
    from s2robot.ros import deploy

    calls = []
    load = deploy._load_policy

    def counting_load(*a, **k):
        policy, device = load(*a, **k)
        predict = policy.predict_action

        def predict_action(*pa, **pk):
            chunk = predict(*pa, **pk)
            calls.append(chunk.shape[1])
            return chunk

        policy.predict_action = predict_action
        assert policy.n_action_steps == 7
        return policy, device

    monkeypatch.setattr(deploy, "_load_policy", counting_load)
    assert _deploy(diffusion_ckpt, tmp_path, "robot=sim_lift_cube", "max_steps=14", "n_action_steps=7",
                   "temporal_ensemble=off") == 0
    monkeypatch.undo()
    assert calls and set(calls) == {7}  # every chunk the loop got held 7 actions
    # the warm-up's chunk before connecting, then 14 ticks of 7-action chunks (one may be planned ahead);
    # 4-action chunks would take 4+
    assert len(calls) - 1 <= 3
    with pytest.raises(SystemExit, match=r"^s2robot deploy: n_action_steps=8: expected an integer in \[1, 7\]"):
        _deploy(diffusion_ckpt, tmp_path, "robot=sim_lift_cube", "n_action_steps=8")


def test_bad_value_from_the_command_line_is_one_line_no_traceback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "s2robot.cli", "deploy", "checkpoint=none", "robot=rosbridge_lift_cube",
                        "robot.port=abc", f"out={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r
    assert r.stderr.strip() == "s2robot deploy: robot.port='abc': expected an integer", r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_users_own_robot_file_is_validated_and_deploys(tiny_ckpt, tmp_path, lift_robot, monkeypatch):
    from omegaconf import OmegaConf

    rob = lift_robot()
    shipped = Path(__import__("s2robot.configs", fromlist=["x"]).__file__).parent / "robot/rosbridge_lift_cube.yaml"
    mine = OmegaConf.load(shipped)
    mine.name, mine.port = "my_arm", rob.server.port
    monkeypatch.chdir(tmp_path)
    OmegaConf.save(mine, tmp_path / "my_robot.yaml")
    mine.safety.max_delta = "fast"
    OmegaConf.save(mine, tmp_path / "my_bad_robot.yaml")
    with pytest.raises(SystemExit, match=r"^s2robot deploy: robot.safety.max_delta='fast': expected a number"):
        _deploy(tiny_ckpt, tmp_path / "o1", "robot=./my_bad_robot.yaml")
    rc = _deploy(tiny_ckpt, tmp_path / "o2", "robot=./my_robot.yaml", "dry_run=true", "max_steps=10")
    summary = json.loads((tmp_path / "o2" / "deploy_summary.json").read_text())
    assert rc == 0 and summary["robot"] == "my_arm" and summary["episodes"][0]["commands"] >= 3, summary
    assert set(rob.published()) == {"/s2robot/shadow/s2robot/command"}


def test_wrong_camera_topic_and_misspelled_joint_are_named(tiny_ckpt, tmp_path, lift_robot, capsys):
    rob = lift_robot()
    port = f"robot.port={rob.server.port}"
    rc = _deploy(tiny_ckpt, tmp_path / "cam", "robot=rosbridge_lift_cube", port, "input_timeout_s=1.5",
                 "robot.cameras.front.topic=/front/image_rect")
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "cam" / "deploy_summary.json").read_text())
    assert rc == 4 and summary["exit_name"] == "INPUTS" and summary["episodes"] == []
    assert "/front/image_rect (robot.cameras.front.topic)" in summary["detail"] and "/front/image_rect" in out
    rc = _deploy(tiny_ckpt, tmp_path / "joint", "robot=rosbridge_lift_cube", port, "input_timeout_s=3",
                 "robot.proprio.2.names=[j0,j1,j2,j3,j_4]")
    summary = json.loads((tmp_path / "joint" / "deploy_summary.json").read_text())
    assert rc == 4, summary
    assert "/joint_states (robot.joint_state_topic)" in summary["detail"] and "j_4" in summary["detail"]
    assert rob.published() == {}  # it never started commanding


def test_check_reports_inputs_runs_the_policy_and_publishes_nothing(tiny_ckpt, tmp_path, lift_robot, capsys):
    rob = lift_robot()
    port = f"robot.port={rob.server.port}"
    rc = _deploy(tiny_ckpt, tmp_path, "robot=rosbridge_lift_cube", port, "check=true", "check_listen_s=1.0")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "/front/image_raw: " in out and f"{IMG}x{IMG} rgb8" in out and "jpeg" in out and "Hz" in out
    assert "joints found ['finger_l', 'finger_r', 'j0', 'j1', 'j2', 'j3', 'j4']" in out
    assert "clock offset" in out and "policy forward" in out and "observation-to-command latency" in out
    assert "check passed" in out
    rc = _deploy(tiny_ckpt, tmp_path, "robot=rosbridge_lift_cube", port, "check=true", "check_listen_s=0.5",
                 "input_timeout_s=1.0", "robot.cameras.front.topic=/front/image_rect",
                 "robot.proprio.2.names=[j0,j1,j2,j3,j_4]")
    out = capsys.readouterr().out
    assert rc == 4, out
    assert "no message on /front/image_rect (robot.cameras.front.topic)" in out
    assert "joint 'j_4' (robot.proprio) not in the JointState (did you mean 'j4'?)" in out
    assert rob.server.advertised == {} and rob.published() == {}  # nothing advertised, nothing published


def test_policy_fault_exit_code_and_summary(nan_ckpt, tmp_path):
    rc = _deploy(nan_ckpt, tmp_path, "robot=sim_lift_cube", "episodes=2", "max_steps=20")
    summary = json.loads((tmp_path / "deploy_summary.json").read_text())
    assert rc == 5 and summary["exit_name"] == "POLICY_FAULT"
    assert [e["status"] for e in summary["episodes"]] == ["policy_fault"]  # no second episode into the same fault
    ep = summary["episodes"][0]
    assert ep["commands"] == 0 and "consecutive actions rejected" in ep["detail"]


@pytest.mark.parametrize("sig, code, ending", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_signals_end_with_summary_partial_episode_and_exit_code(tiny_ckpt, tmp_path, lift_robot, sig, code, ending):
    import os
    import signal
    import subprocess
    import sys

    rob = lift_robot()
    shadow = "/s2robot/shadow/s2robot/command"
    proc = subprocess.Popen([sys.executable, "-m", "s2robot.cli", "deploy", f"checkpoint={tiny_ckpt}",
                             "robot=rosbridge_lift_cube", f"robot.port={rob.server.port}", "dry_run=true",
                             "episodes=3", "max_steps=100000", f"out={tmp_path}", "device=cpu",
                             f"record={tmp_path / 'rec.zarr'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while len(rob.server.messages(shadow)) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(rob.server.messages(shadow)) >= 5, proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, out
    assert "Traceback" not in out
    summary = json.loads((tmp_path / "deploy_summary.json").read_text())
    assert summary["ending"] == ending and summary["exit_code"] == code
    ep = summary["episodes"]
    assert len(ep) == 1 and ep[0]["status"] == "interrupted" and ep[0]["partial"] is True
    assert ep[0]["commands"] >= 5 and summary["success_rate"] is None
    assert not (tmp_path / "rec.zarr").exists()  # an interrupted episode is not recorded as a demonstration
    n = len(rob.server.messages(shadow))
    time.sleep(0.3)
    assert len(rob.server.messages(shadow)) == n  # nothing after the process ended


def test_exit_codes_are_distinct_and_the_most_severe_wins():
    from s2robot.deploy.control_loop import EpisodeReport
    from s2robot.ros.deploy import ExitCode, exit_code

    def reps(*statuses):
        return [EpisodeReport(status=s) for s in statuses]

    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert exit_code("finished", reps("success", "max_steps")) == ExitCode.OK == 0
    assert exit_code("finished", reps("max_steps", "disconnected")) == ExitCode.DISCONNECTED == 6
    assert exit_code("finished", reps("disconnected", "policy_fault")) == ExitCode.POLICY_FAULT == 5
    assert exit_code("finished", reps("policy_fault", "no_input")) == ExitCode.INPUTS == 4
    assert exit_code("unreachable", []) == ExitCode.UNREACHABLE == 3
    assert exit_code("interrupted", reps("policy_fault", "interrupted")) == ExitCode.INTERRUPTED == 130
    assert exit_code("terminated", reps("interrupted")) == ExitCode.TERMINATED == 143
