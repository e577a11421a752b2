"""`evaluate(backend="warp")`: the same evaluator, reports and seeds on MuJoCo-Warp worlds (Warp CPU device here)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("mujoco_warp")

from s2robot.evaluation import evaluate  # noqa: E402


class LiftUpPolicy(torch.nn.Module):
    """Moves the hand straight up with the gripper open: never succeeds, so every episode hits the time limit."""

    n_obs_steps = 1
    n_action_steps = 4

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def predict_action(self, obs, generators=None):
        B = obs["proprio"].shape[0]
        self.calls.append(B)
        act = torch.zeros(B, self.n_action_steps, 5)
        act[..., 2] = 0.01
        act[..., 4] = -1.0
        return act


def test_warp_backend_runs_the_evaluator_with_reports(tmp_path):
    policy = LiftUpPolicy()
    env_kwargs = {"image_size": 32, "cameras": ["front"]}
    warp = evaluate(policy, task="lift_cube", n_envs=2, episodes=3, seed=5, device="cpu", out_dir=tmp_path / "w",
                    n_videos=1, env_kwargs=env_kwargs, backend="warp", max_steps=6, progress=False)
    cpu = evaluate(LiftUpPolicy(), task="lift_cube", n_envs=2, episodes=3, seed=5, device="cpu",
                   out_dir=tmp_path / "c", n_videos=0, env_kwargs=env_kwargs, backend="cpu", max_steps=6,
                   progress=False)
    assert [e["seed"] for e in warp["episodes"]] == [5, 6, 7]
    assert [(e["length"], e["success"], e["end"]) for e in warp["episodes"]] == \
        [(e["length"], e["success"], e["end"]) for e in cpu["episodes"]]
    assert all(e["error"] is None for e in warp["episodes"])
    assert max(policy.calls) == 2  # one batched forward for both worlds
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["success_rate"] == 0.0 and (tmp_path / "w" / "eval_plot.png").is_file()
    assert (tmp_path / "w" / "videos" / "episode_000.mp4").stat().st_size > 0


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend='gpu'"):
        evaluate(LiftUpPolicy(), task="lift_cube", n_envs=1, episodes=1, backend="gpu", progress=False)


@pytest.mark.parametrize("fault", ["raise", "nan_world_1"])
def test_a_failing_warp_step_ends_episodes_not_the_evaluation(tmp_path, monkeypatch, fault):
    from s2robot.envs.warp_backend import WarpBatchEnv

    step, calls = WarpBatchEnv.step, {"n": 0}

    def faulty_step(self, actions):
        calls["n"] += 1
        out = step(self, actions)
        if calls["n"] == 3:
            if fault == "raise":
                raise RuntimeError("injected warp failure")
            self.sim.qpos[1, 0] = float("nan")
        return out

    monkeypatch.setattr(WarpBatchEnv, "step", faulty_step)
    res = evaluate(LiftUpPolicy(), task="lift_cube", n_envs=2, episodes=4, seed=5, device="cpu", n_videos=0,
                   env_kwargs={"image_size": 32, "cameras": ["front"]}, backend="warp", max_steps=6,
                   progress=False)
    eps = {e["seed"]: e for e in res["episodes"]}
    assert sorted(eps) == [5, 6, 7, 8]  # the evaluation went on with fresh seeds
    errored = sorted(s for s, e in eps.items() if e["end"] == "error")
    if fault == "raise":
        assert errored == [5, 6] and "injected warp failure" in eps[5]["error"]
    else:
        assert errored == [6] and "non-finite physics state" in eps[6]["error"]
    assert all(eps[s]["end"] != "error" and eps[s]["length"] == 6 for s in (7, 8))
