"""Demo collection into the EpisodeStore (round trip, interrupted + resumed, CLI) and the generic adapter."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from s2robot.datasets.store import EpisodeStore
from s2robot import collection as collect_mod
from s2robot.envs import make_env
from s2robot.envs.adapter import ImageEnvAdapter, rendered_image_obs
from s2robot.collection import collect, record_episode

LIFT = {"name": "lift_cube", "cameras": ["front", "wrist"], "image_size": 32, "max_episode_steps": None,
        "env_kwargs": {}}


@pytest.mark.parametrize("limit", [None, 30])
def test_store_attrs_take_env_id_and_limit_from_the_registry(limit):
    """The task config names the task; its gymnasium id and episode limit come from envs/tasks.py, and a number in
    task.max_episode_steps overrides the limit (the env's TimeLimit and the recorded attrs agree)."""
    from s2robot.collection import store_attrs
    from s2robot.envs.tasks import get_task

    env = make_env("lift_cube", image_size=32, cameras=("front",), max_episode_steps=limit)
    try:
        attrs = store_attrs({**LIFT, "max_episode_steps": limit}, env, 32, ("front",), seed=0)
    finally:
        env.close()
    assert attrs["env_id"] == get_task("lift_cube").env_id == "s2robot/LiftCube-v0"
    assert attrs["collect"]["max_episode_steps"] == (limit or get_task("lift_cube").max_episode_steps) == (limit or 80)
    assert attrs["fps"] == 10.0  # the env's control rate


def test_store_attrs_record_the_env_control_rate_as_fps():
    from s2robot.collection import store_attrs

    env = make_env("lift_cube", image_size=32, cameras=("front",), control_hz=20.0)
    try:
        attrs = store_attrs({**LIFT, "env_kwargs": {"control_hz": 20.0}}, env, 32, ("front",), seed=0)
    finally:
        env.close()
    assert attrs["fps"] == 20.0


def test_collect_round_trip(tmp_path):
    out = tmp_path / "lift.zarr"
    summary = collect(LIFT, episodes=2, out=out, seed=5, progress=False)
    assert summary["episodes"] == 2 and summary["new_episodes"] == 2
    store = EpisodeStore.open(out)
    assert store.attrs["task"] == "lift_cube" and store.attrs["cameras"] == ["front", "wrist"]
    assert {"front_image", "wrist_image", "proprio", "action", "reward", "success", "sim_state",
            "episode_seed"} <= set(store.keys)
    ep = store.get_episode(0)
    t = len(ep["action"])
    assert ep["front_image"].shape == (t, 32, 32, 3) and ep["front_image"].dtype == np.uint8
    assert ep["proprio"].shape == (t, 9) and ep["action"].shape == (t, 5)
    assert ep["success"][-1] and not ep["success"][0]
    # the recorded sim_state replays the recorded actions to the same observations
    env = make_env("lift_cube", image_size=32)
    env.reset(seed=0)
    base = env.unwrapped
    base.set_sim_state(ep["sim_state"][0])
    np.testing.assert_array_equal(base.render_camera("front"), ep["front_image"][0])
    for k in range(t - 1):
        obs, *_ = env.step(ep["action"][k])
        np.testing.assert_array_equal(obs["proprio"], ep["proprio"][k + 1])
    np.testing.assert_array_equal(obs["wrist_image"], ep["wrist_image"][t - 1])
    env.close()
    store.close()


def test_interrupted_collection_resumes_to_the_same_store(tmp_path, monkeypatch):
    ref = tmp_path / "ref.zarr"
    collect(LIFT, episodes=3, out=ref, seed=1, progress=False)

    out = tmp_path / "crash.zarr"
    real = collect_mod.record_episode
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed during the third episode
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_mod, "record_episode", crashing)
    with pytest.raises(KeyboardInterrupt):
        collect(LIFT, episodes=3, out=out, seed=1, progress=False)
    monkeypatch.setattr(collect_mod, "record_episode", real)
    assert EpisodeStore.open(out).n_episodes == 2  # finished episodes kept
    summary = collect(LIFT, episodes=3, out=out, seed=1, progress=False)
    assert summary["new_episodes"] == 1 and summary["episodes"] == 3
    a, b = EpisodeStore.open(ref), EpisodeStore.open(out)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in ("action", "proprio", "front_image", "episode_seed"):
        np.testing.assert_array_equal(a.array(key)[:], b.array(key)[:])
    # resuming with a different task/seed is refused with a clear error
    with pytest.raises(ValueError, match="seed"):
        collect(LIFT, episodes=4, out=out, seed=2, progress=False)


def test_collect_cli(tmp_path, capsys):
    from s2robot.cli import main

    out = tmp_path / "cli.zarr"
    rc = main(["collect", "task=match_marker", "episodes=1", f"out={out}", "image_size=24"])
    assert rc == 0
    assert "1 episodes" in capsys.readouterr().out
    store = EpisodeStore.open(out)
    assert store.attrs["task"] == "match_marker" and store.n_episodes == 1
    assert store.array("front_image").shape[1:] == (24, 24, 3)


class _Dot(gym.Env):
    """Tiny foreign env: a dot moves on a line; rendered as a 20x30 image; success when it reaches x >= 3."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode="rgb_array"):
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-10, 10, (2,), np.float64)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1, 1))
        return np.array([self.x, 0.0]), {}

    def step(self, action):
        self.x += float(action[0])
        done = self.x >= 3
        return np.array([self.x, 1.0]), float(done), done, False, {"is_success": done}

    def render(self):
        img = np.zeros((20, 30, 3), np.uint8)
        img[8:12, int(np.clip(5 * (self.x + 2), 0, 29))] = 255
        return img


def test_adapter_records_a_foreign_env():
    env = ImageEnvAdapter(_Dot(), rendered_image_obs("front", proprio=lambda o: o[:1]), image_size=16)
    assert set(env.observation_space.spaces) == {"front_image", "proprio"}
    assert env.observation_space["front_image"].shape == (16, 16, 3)
    episode, success = record_episode(env, lambda obs: np.array([1.0], np.float32), seed=0, max_steps=10)
    assert success and episode["success"][-1]
    assert episode["front_image"].shape[1:] == (16, 16, 3) and episode["front_image"].dtype == np.uint8
    assert episode["proprio"].shape[1:] == (1,) and "sim_state" not in episode
    assert env.observation_space.contains({k: episode[k][0] for k in ("front_image", "proprio")})
    with pytest.raises(ValueError, match="proprio"):
        ImageEnvAdapter(_Dot(), lambda e, o: {"front_image": e.render()})
