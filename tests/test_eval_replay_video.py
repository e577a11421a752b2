"""Videos of a policy that sees no camera: the evaluator replays its video episodes in an env that renders, and the
replay must be the evaluated episode (same length, score and final low-dim observation)."""

from __future__ import annotations

import json

import numpy as np
import torch

from s2robot.evaluation import evaluate
from s2robot.evaluation.replay_video import video_env_fn
from s2robot.evaluation.vector_env import TaskEnvFactory

STATE_ENV = {"cameras": (), "image_size": 32, "state_obs": True}


class NoisyStatePolicy(torch.nn.Module):
    """Reads proprio + state only; moves the hand by seeded random steps so every episode is a different path."""

    n_obs_steps = 1
    n_action_steps = 3
    obs_keys = ["proprio", "state"]

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def predict_action(self, obs, generators=None):
        assert not any(k.endswith("_image") for k in obs)  # the evaluated envs render nothing
        noise = torch.stack([torch.randn(self.n_action_steps, 3, generator=g) for g in generators])
        act = torch.zeros(len(generators), self.n_action_steps, 5)
        act[..., :3] = 0.02 * noise
        act[..., 4] = 1.0
        return act


def _frames(path: str) -> list[np.ndarray]:
    import imageio.v2 as imageio

    reader = imageio.get_reader(path)
    try:
        return [np.asarray(f) for f in reader]
    finally:
        reader.close()


def test_state_policy_videos_are_replayed_and_match_the_evaluated_episodes(tmp_path):
    torch.set_num_threads(1)
    s = evaluate(NoisyStatePolicy(), task="lift_cube", n_envs=2, episodes=3, seed=7, device="cpu", out_dir=tmp_path,
                 n_videos=2, env_kwargs=STATE_ENV, max_steps=9, progress=False, video_cameras=("front", "wrist"))
    assert s["replay_mismatch"] == []
    videos = s["files"]["videos"]
    assert [v.rsplit("/", 1)[-1] for v in videos] == ["episode_000.mp4", "episode_001.mp4"]
    records = json.loads((tmp_path / "episodes.json").read_text())
    for path, rec in zip(videos, records):
        frames = _frames(path)
        assert len(frames) == rec["length"] + 1  # the reset frame, then one per executed action
        assert frames[0].shape[1] > frames[0].shape[0]  # front and wrist side by side
        assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1.0  # the arm moved


def test_a_replay_that_is_not_the_evaluated_episode_is_reported(tmp_path, monkeypatch):
    """A replay env that moves differently (half the step limit) ends elsewhere: reported with a warning."""
    import pytest

    import s2robot.evaluation.rollout as rollout

    assert video_env_fn(TaskEnvFactory("lift_cube", dict(STATE_ENV)), None).env_kwargs["cameras"] == ("front",)
    other = TaskEnvFactory("lift_cube", {**STATE_ENV, "cameras": ("front",), "max_delta": 0.01})
    monkeypatch.setattr(rollout, "video_env_fn", lambda env_fn, cameras: other)
    with pytest.warns(UserWarning, match=r"replayed videos of episodes \[0\] differ"):
        s = evaluate(NoisyStatePolicy(), task="lift_cube", n_envs=1, episodes=2, seed=7, device="cpu",
                     out_dir=tmp_path, n_videos=1, env_kwargs=STATE_ENV, max_steps=6, progress=False)
    assert s["replay_mismatch"] == [0]
