"""Batched evaluator: batching contract, episode accounting, seed determinism across N, NaN and crash paths,
report files. Uses a tiny gymnasium env (defined here, imported by the spawn workers) with the task obs dict
layout, and a counting fake policy, so no MuJoCo and no real model is needed."""

from __future__ import annotations

import json
import os
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

IMG = 8


class ToyReachEnv(gym.Env):
    """Point reaching a seeded goal. Obs: ``front_image``/``wrist_image`` uint8 (8, 8, 3) filled with ``t``,
    ``proprio`` float32 [x, y, goal_x, goal_y, seed, t]. ``info`` has ``success`` and ``score``.

    ``scripted_length``: succeed exactly at step ``2 + seed % 4`` whatever the actions (episode accounting).
    ``crash_seed``: the worker process dies (``os._exit``) at step 2 of that seed's episode.
    ``raise_seed``: ``step`` raises at step 1 of that seed's episode.
    ``hang_seed``: ``step`` blocks for a minute at step 1 of that seed's episode.
    """

    metadata = {"render_fps": 5}

    def __init__(self, scripted_length=False, crash_seed=None, raise_seed=None, hang_seed=None):
        self.observation_space = gym.spaces.Dict({
            "front_image": gym.spaces.Box(0, 255, (IMG, IMG, 3), np.uint8),
            "wrist_image": gym.spaces.Box(0, 255, (IMG, IMG, 3), np.uint8),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (6,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.scripted_length, self.crash_seed, self.raise_seed = scripted_length, crash_seed, raise_seed
        self.hang_seed = hang_seed

    def _obs(self):
        img = np.full((IMG, IMG, 3), self.t % 256, np.uint8)
        prop = np.array([*self.x, *self.goal, self.seed, self.t], np.float32)
        return {"front_image": img, "wrist_image": 255 - img, "proprio": prop}

    def _info(self):
        dist = float(np.linalg.norm(self.x - self.goal))
        success = self.t == 2 + self.seed % 4 if self.scripted_length else dist < 0.15
        return {"success": bool(success), "score": max(0.0, 1.0 - dist)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed, self.t = int(seed), 0
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.x = np.zeros(2)
        return self._obs(), self._info()

    def step(self, action):
        if self.seed == self.crash_seed and self.t == 2:
            os._exit(3)
        if self.seed == self.raise_seed and self.t == 1:
            raise RuntimeError("toy env exploded")
        if self.seed == self.hang_seed and self.t == 1:
            time.sleep(60)
        self.x = self.x + np.clip(np.asarray(action, np.float64), -0.3, 0.3)
        self.t += 1
        return self._obs(), 0.0, False, False, self._info()


class ToyEnvFactory:
    """Picklable factory (the workers import this module to rebuild it)."""

    def __init__(self, **kw):
        self.kw = kw

    def __call__(self):
        return ToyReachEnv(**self.kw)


class CountingPolicy(torch.nn.Module):
    """Proportional controller plus per-row generator noise; records every forward's batch size and checks the
    observation history it is given (T_obs frames, padded with the first frame after a reset)."""

    n_obs_steps = 2
    n_action_steps = 3

    def __init__(self, gain=0.7, noise=0.25, nan_seeds=()):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.gain, self.noise, self.nan_seeds = gain, noise, set(nan_seeds)
        self.calls: list[int] = []

    def predict_action(self, obs, generators=None):
        prop = obs["proprio"]
        B, T = prop.shape[:2]
        assert T == self.n_obs_steps and obs["front_image"].shape == (B, T, IMG, IMG, 3)
        assert obs["front_image"].dtype == torch.uint8 and generators is not None and len(generators) == B
        t_now, t_prev = prop[:, -1, 5], prop[:, -2, 5]
        assert torch.equal(t_prev, torch.clamp(t_now - 1, min=0)), "history is not the last T_obs steps"
        assert torch.equal(obs["front_image"][:, -1, 0, 0, 0].float(), t_now), "images and proprio out of sync"
        self.calls.append(B)
        err = (prop[:, -1, 2:4] - prop[:, -1, 0:2]) * self.gain
        noise = torch.stack([torch.randn(self.n_action_steps, 2, generator=g) for g in generators])
        act = err[:, None, :] + self.noise * noise
        for i, s in enumerate(prop[:, -1, 4].tolist()):
            if int(s) in self.nan_seeds:
                act[i, 1] = float("nan")
        return act


def _run(policy, n_envs, episodes, env_kw=None, **kw):
    from s2robot.evaluation import evaluate

    kw.setdefault("max_steps", 7)
    return evaluate(policy, task="toy", n_envs=n_envs, episodes=episodes, seed=kw.pop("seed", 10), device="cpu",
                    env_fn=ToyEnvFactory(**(env_kw or {})), progress=False, **kw)


def _episodes(out_dir):
    with open(os.path.join(out_dir, "episodes.json")) as f:
        return json.load(f)


def test_one_forward_per_control_step_for_all_envs(tmp_path):
    """3 envs in lock-step, never succeeding, 7-step limit, chunks of 3: forwards at steps 0, 3, 6, batch 3."""
    policy = CountingPolicy(gain=0.0, noise=0.0)
    s = _run(policy, n_envs=3, episodes=3, out_dir=tmp_path, n_videos=0)
    assert policy.calls == [3, 3, 3]
    assert s["policy_forwards"] == 3 and s["env_steps"] == 21
    eps = _episodes(tmp_path)
    assert [e["end"] for e in eps] == ["time_limit"] * 3 and all(e["length"] == 7 for e in eps)


class RampPolicy(CountingPolicy):
    """Every forward at env step t returns a chunk whose actions all equal ``(t + 1) / 100`` on both axes, and
    records the position x it saw, so the actions the envs executed can be read back from x's increments."""

    def __init__(self):
        super().__init__(gain=0.0, noise=0.0)
        self.seen: list[tuple[float, float]] = []  # (t, x) per row of each forward

    def predict_action(self, obs, generators=None):
        prop = obs["proprio"][:, -1]
        self.calls.append(prop.shape[0])
        self.seen += [(float(t), float(x)) for t, x in zip(prop[:, 5], prop[:, 0])]
        value = (prop[:, 5:6] + 1) / 100  # (B, 1)
        return value[:, None, :].expand(-1, self.n_action_steps, 2).clone()


def test_replan_every_k_steps():
    """replan_every=1: a forward at every step (7 steps, batch 3); replan_every=2: at steps 0, 2, 4, 6."""
    policy = RampPolicy()
    s = _run(policy, n_envs=3, episodes=3, replan_every=1)
    assert policy.calls == [3] * 7 and s["policy_forwards"] == 7 and s["execution"]["replan_every"] == 1
    executed = np.diff([x for t, x in policy.seen[::3]])  # env 0's x at steps 0..6
    assert np.allclose(executed, [(t + 1) / 100 for t in range(6)], atol=1e-6)  # always the newest chunk's action
    policy = RampPolicy()
    _run(policy, n_envs=3, episodes=3, replan_every=2)
    assert sorted({t for t, _ in policy.seen}) == [0, 2, 4, 6]


def test_temporal_ensemble_executes_act_weighted_mean():
    """ACT ensembling (m = 0.5, chunks of 3): a forward at every step; the action at step t is the exp(-m i)-weighted
    mean of the predictions of the chunks made at t-2, t-1, t (i = 0 the oldest)."""
    m = 0.5
    policy = RampPolicy()
    s = _run(policy, n_envs=3, episodes=3, temporal_ensemble=m)
    assert policy.calls == [3] * 7 and s["execution"]["temporal_ensemble"] == m
    executed = np.diff([x for t, x in policy.seen[::3]])
    for t, got in enumerate(executed):
        made = np.arange(max(0, t - 2), t + 1)  # steps whose chunks cover step t, oldest first
        w = np.exp(-m * np.arange(len(made)))
        assert got == pytest.approx(float((w * (made + 1) / 100).sum() / w.sum()), abs=1e-6)
    with pytest.raises(ValueError, match=r"temporal_ensemble=-1.0: expected a finite number m >= 0"):
        _run(RampPolicy(), n_envs=1, episodes=1, temporal_ensemble=-1.0)
    with pytest.raises(ValueError, match="'often'.*'off'"):
        _run(RampPolicy(), n_envs=1, episodes=1, temporal_ensemble="often")


def test_policy_default_execution_and_off():
    """A policy whose config asks for ACT ensembling (``temporal_ensemble`` attribute) gets it by default: a forward
    at every step; ``temporal_ensemble="off"`` executes whole chunks (forwards at steps 0, 3, 6)."""
    policy = RampPolicy()
    policy.temporal_ensemble = 0.2
    s = _run(policy, n_envs=3, episodes=3)
    assert policy.calls == [3] * 7 and s["execution"]["temporal_ensemble"] == 0.2
    policy = RampPolicy()
    policy.temporal_ensemble = 0.2
    s = _run(policy, n_envs=3, episodes=3, temporal_ensemble="off")
    assert policy.calls == [3] * 3 and s["execution"]["temporal_ensemble"] is None
    with pytest.raises(ValueError, match="max_chunk"):
        _run(RampPolicy(), n_envs=1, episodes=1, replan_every=0)


def test_episode_accounting_with_refill(tmp_path):
    """7 episodes of seed-dependent length over 3 envs: each episode exactly once, lengths exact, batch refilled."""
    policy = CountingPolicy()
    s = _run(policy, n_envs=3, episodes=7, env_kw={"scripted_length": True}, out_dir=tmp_path, n_videos=0)
    eps = _episodes(tmp_path)
    assert [e["episode"] for e in eps] == list(range(7))
    assert [e["seed"] for e in eps] == [10 + i for i in range(7)]
    assert [e["length"] for e in eps] == [2 + (10 + i) % 4 for i in range(7)]
    assert all(e["success"] and e["end"] == "success" and e["error"] is None for e in eps)
    assert s["n_episodes"] == 7 and s["success_rate"] == 1.0 and s["env_steps"] == sum(e["length"] for e in eps)
    assert len(policy.calls) == s["policy_forwards"] <= s["env_steps"]
    assert max(policy.calls) == 3  # the batch is full while episodes remain


def test_same_results_for_any_n_envs():
    """Per-episode outcomes (success, lengths, scores, returns) do not depend on N, and repeat exactly."""

    def strip(summary_eps):
        return [{k: v for k, v in e.items() if k != "wall_s"} for e in summary_eps]

    outs = {}
    for n in (1, 3):
        s = _run(CountingPolicy(gain=0.5, noise=0.3), n_envs=n, episodes=6, max_steps=9)
        outs[n] = strip(s["episodes"])
    assert outs[1] == outs[3]
    assert 0 < sum(e["success"] for e in outs[1]) < 6, "the noise should make outcomes differ between episodes"


def test_nan_action_aborts_only_that_episode():
    s = _run(CountingPolicy(nan_seeds={12}), n_envs=2, episodes=4)
    eps = s["episodes"]
    assert eps[2]["end"] == "error" and "non-finite" in eps[2]["error"] and not eps[2]["success"]
    assert all(e["error"] is None for i, e in enumerate(eps) if i != 2)
    assert s["n_errors"] == 1 and not s["all_errored"]


def test_crashed_hung_and_raising_workers_are_recorded_and_restarted():
    s = _run(CountingPolicy(gain=0.0, noise=0.0), n_envs=2, episodes=6, step_timeout=8.0,
             env_kw={"crash_seed": 11, "raise_seed": 13, "hang_seed": 14})
    eps = s["episodes"]
    assert "died" in eps[1]["error"] and "exit code 3" in eps[1]["error"] and eps[1]["length"] == 2
    assert "toy env exploded" in eps[3]["error"]
    assert "did not answer" in eps[4]["error"] and eps[4]["length"] == 1
    assert [e["end"] for e in eps] == ["time_limit", "error", "time_limit", "error", "error", "time_limit"]
    assert s["worker_restarts"] == 2 and s["n_errors"] == 3


def test_all_errored_flag_and_cli_exit_code():
    from s2robot.evaluation.cli import exit_code

    s = _run(CountingPolicy(nan_seeds=set(range(10, 13))), n_envs=1, episodes=3)
    assert s["all_errored"] and exit_code(s) == 1
    assert exit_code({**s, "all_errored": False}) == 0


def test_report_files_are_valid(tmp_path):
    import imageio.v3 as iio
    import matplotlib.image as mpimg

    s = _run(CountingPolicy(), n_envs=2, episodes=3, out_dir=tmp_path, n_videos=2)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_episodes"] == 3 and len(_episodes(tmp_path)) == 3
    lo, hi = summary["success_ci95"]
    assert 0.0 <= lo <= summary["success_rate"] <= hi <= 1.0
    img = mpimg.imread(tmp_path / "eval_plot.png")
    assert img.ndim == 3 and img.shape[0] > 100
    videos = s["files"]["videos"]
    assert [os.path.basename(v) for v in videos] == ["episode_000.mp4", "episode_001.mp4"]
    eps = _episodes(tmp_path)
    for i, v in enumerate(videos):
        frames = np.stack(list(iio.imiter(v)))
        assert frames.shape[0] == eps[i]["length"] + 1  # reset frame + one per step
        factor = -(-256 // IMG)  # views enlarged to >= 256 px wide
        assert frames.shape[2] == 2 * IMG * factor  # front and wrist side by side


def test_bad_inputs_are_named():
    from s2robot.evaluation import evaluate

    with pytest.raises(ValueError, match="episodes"):
        evaluate(CountingPolicy(), task="toy", episodes=0, env_fn=ToyEnvFactory())
    with pytest.raises(ValueError, match="backend='warp' runs the built-in tasks only"):
        evaluate(CountingPolicy(), task="toy", backend="warp", env_fn=ToyEnvFactory())
    with pytest.raises(ValueError, match="backend='mjx'"):
        evaluate(CountingPolicy(), task="toy", backend="mjx", env_fn=ToyEnvFactory())
    with pytest.raises(ValueError, match="task name or an env_fn"):
        evaluate(CountingPolicy())
