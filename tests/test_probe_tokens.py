"""scripts/probe_tokens.py on a tiny store whose tokens encode where the second object is: ``--object 1`` must
learn it (and ``--object 0``, noise to the tokens, must not), ``--within`` keeps only near frames, and an object
index past the state is one error line."""

from __future__ import annotations

import re

import numpy as np
import pytest
from script_loader import ROOT, load_script

from s2robot.datasets.store import EpisodeStore

EPISODES, T, N, D = 24, 25, 4, 8


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "s.zarr"
    rng = np.random.default_rng(0)
    s = EpisodeStore.create(path, attrs={"task": "toy", "fps": 10, "cameras": ["front"]})
    rel1, yaw1 = [], []
    for _ in range(EPISODES):
        state = rng.uniform(-0.1, 0.1, (T, 10)).astype(np.float32)  # two objects x [x, y, z, cos, sin]
        proprio = rng.uniform(-0.1, 0.1, (T, 4)).astype(np.float32)
        rel1.append(state[:, 5:8] - proprio[:, :3])
        yaw1.append(state[:, 8:10])  # object 1's (cos, sin): the tokens carry its direction too
        s.append_episode({"front_image": np.zeros((T, 4, 4, 3), np.uint8), "proprio": proprio, "state": state,
                          "action": np.zeros((T, 2), np.float32), "reward": np.zeros(T, np.float32),
                          "success": np.zeros(T, bool)})
    rel1 = np.concatenate(rel1)
    tokens = rng.normal(0, 0.05, (len(rel1), N, D)).astype(np.float32)
    tokens[:, :, :3] += rel1[:, None] * 10  # the tokens know object 1 relative to the end effector, not object 0
    tokens[:, :, 3:5] += np.concatenate(yaw1)[:, None] * 10
    s.group.require_group("features/k").create_array("front", data=tokens.astype(np.float16))
    s.close()
    return path


def _rmse(out: str) -> tuple[np.ndarray, np.ndarray]:
    m = re.search(r"RMSE x/y/z ([\d.]+)/([\d.]+)/([\d.]+) mm \(mean predictor ([\d.]+)/([\d.]+)/([\d.]+) mm\)", out)
    assert m, out
    v = np.array([float(x) for x in m.groups()])
    return v[:3], v[3:]


def test_probe_learns_the_object_the_tokens_encode(store, capsys):
    probe = load_script(ROOT / "scripts" / "probe_tokens.py")
    args = [str(store), "--feature-key", "k", "--steps", "1000"]
    assert probe.main(args + ["--object", "1"]) == 0
    err1, base1 = _rmse(capsys.readouterr().out)
    assert np.all(err1 < 0.5 * base1), (err1, base1)
    assert probe.main(args + ["--object", "0"]) == 0
    err0, base0 = _rmse(capsys.readouterr().out)
    assert np.all(err0 > 0.8 * base0), (err0, base0)


def _yaw_median(out: str) -> float:
    m = re.search(r"yaw error median ([\d.]+) deg", out)
    assert m, out
    return float(m.group(1))


def test_yaw_probe_learns_the_direction_the_tokens_encode(store, capsys):
    """``--yaw`` adds (cos, sin) of the object's yaw to the target and prints the held-out angle error."""
    probe = load_script(ROOT / "scripts" / "probe_tokens.py")
    args = [str(store), "--feature-key", "k", "--steps", "1000", "--yaw"]
    assert probe.main(args + ["--object", "1"]) == 0
    known = _yaw_median(capsys.readouterr().out)
    assert probe.main(args + ["--object", "0"]) == 0
    unknown = _yaw_median(capsys.readouterr().out)
    assert known < 25 and unknown > 50, (known, unknown)


def test_within_keeps_near_frames_and_bad_object_is_one_line(store, capsys):
    probe = load_script(ROOT / "scripts" / "probe_tokens.py")
    args = [str(store), "--feature-key", "k", "--steps", "50", "--object", "1"]
    assert probe.main(args + ["--within", "0.1"]) == 0
    out = capsys.readouterr().out
    n_train, n_val = map(int, re.search(r"(\d+) train / (\d+) val frames \(object within 100 mm xy\)", out).groups())
    assert 0 < n_train + n_val < EPISODES * T
    with pytest.raises(SystemExit, match="--within 0.0001: no training or held-out frame"):
        probe.main(args + ["--within", "0.0001"])
    with pytest.raises(SystemExit, match="--object 2: the state .10 values. holds 2 objects"):
        probe.main([str(store), "--feature-key", "k", "--object", "2"])


def test_state_estimate_error_reports_millimetres_and_degrees():
    report = load_script(ROOT / "scripts" / "state_estimate_error.py")
    yaw = np.linspace(-3, 3, 50)
    true = np.stack([np.zeros(50), np.zeros(50), np.full(50, 0.02), np.cos(yaw), np.sin(yaw), np.ones(50)], axis=1)
    est = true.copy()
    est[:, 0] += 0.003  # 3 mm in x
    est[:, 3], est[:, 4] = np.cos(yaw + np.deg2rad(2)), np.sin(yaw + np.deg2rad(2))  # 2 deg, across the +-pi seam
    lines = report.state_errors(est, true)
    assert lines[0] == "object 0: x / y RMS 3.0 / 0.0 mm; yaw median 2.00 deg, RMS 2.00 deg", lines
    assert lines[1] == "goal entries: RMS 0.0000"


def test_eval_state_noise_perturbs_only_the_planning_copy(monkeypatch):
    """The diagnostic's patched ``plan`` moves the first object's x, y and yaw by the configured amounts (a fixed
    per-episode draw in ``episode`` mode) for the policy's forward only; the rollout's state history is restored."""
    from types import SimpleNamespace

    monkeypatch.setenv("POS_MM", "5")
    monkeypatch.setenv("YAW_DEG", "5")
    monkeypatch.setenv("MODE", "episode")
    noise = load_script(ROOT / "scripts" / "eval_state_noise.py")
    seen = []
    monkeypatch.setattr(noise, "_plan", lambda self, need: seen.append(self.hist["state"][need].copy()))
    state = np.zeros((2, 2, 5), np.float32)  # 2 envs, 2 obs steps, [x, y, z, cos, sin]
    state[..., 3] = 1.0
    loop = SimpleNamespace(hist={"state": state.copy()}, slots=[SimpleNamespace(index=7), SimpleNamespace(index=8)])
    noise.plan(loop, [0, 1])
    noise.plan(loop, [0, 1])
    np.testing.assert_array_equal(loop.hist["state"], state)  # restored
    moved = seen[0]
    assert np.all(np.abs(moved[..., :2]) > 0) and np.all(np.abs(moved[..., :2]) < 0.03)  # metres, ~5 mm draws
    yaw = np.rad2deg(np.arctan2(moved[..., 4], moved[..., 3]))
    assert np.all(np.abs(yaw) > 0) and np.all(np.abs(yaw) < 30)
    np.testing.assert_allclose(seen[1], moved)  # episode mode: the same bias at every plan of an episode
    assert not np.allclose(moved[0], moved[1])  # different episodes, different draws
