"""push_marked, the fine-detail task of the S2 study: easy motion, a few-pixel marker decides which cube.

Checks the three properties the study relies on: the expert succeeds; pushing the other cube is a failure that
stays a failure (so a policy that cannot read the marker is at chance, 1/2); and only the marker's mirrored halves
differ between the cubes, a few pixels wide in the 96 px front view.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from s2robot.envs import make_env
from s2robot.envs.experts import PushMarkedExpert, make_expert
from s2robot.envs.tasks import get_task


def _run(env, expert, seed, steps=60):
    obs, info = env.reset(seed=seed)
    for _ in range(steps):
        obs, _, term, trunc, info = env.step(expert.act(obs))
        if term or trunc:
            break
    return info


def test_expert_pushes_the_marked_cube():
    env = make_env("push_marked", cameras=())
    expert = make_expert("push_marked", env, seed=0)
    wins = sum(_run(env, expert, seed)["success"] for seed in range(12))
    assert wins == 12


class _WrongCubeExpert(PushMarkedExpert):
    """The expert's motion applied to the other cube: what a policy that misreads the marker does."""

    def compute_action(self):
        p = self.base._params
        original = p[0]
        p[0] = 1 - original
        try:
            return super().compute_action()
        finally:
            p[0] = original


def test_pushing_the_other_cube_fails_for_good():
    env = make_env("push_marked", cameras=())
    expert = _WrongCubeExpert(env, seed=0)
    for seed in range(6):
        info = _run(env, expert, seed)
        assert not info["success"] and info["score"] == 0.0
        s = env.unwrapped.state_arrays()
        other = 1 - int(s.params[0, 0])
        start = s.params[0, 1:].reshape(2, 2)
        assert start[other, 1] - s.obj_pos[0, other, 1] > 0.04  # it really pushed the other cube


def test_markers_are_mirror_images_and_about_5_pixels_wide():
    env = make_env("push_marked", image_size=96, cameras=("front",))
    base = env.unwrapped
    m = base.model
    gid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)  # noqa: E731
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        target = int(base._params[0])
        other = 1 - target
        for a, b in (("tl", "tr"), ("br", "bl"), ("tr", "tl"), ("bl", "br")):  # left-right mirror images
            np.testing.assert_array_equal(m.geom_rgba[gid(f"marker_{target}_{a}")], m.geom_rgba[gid(f"marker_{other}_{b}")])
        colours = {c: tuple(m.geom_rgba[gid(f"marker_{target}_{c}")]) for c in ("tl", "tr", "bl", "br")}
        assert colours["tl"] == colours["bl"] != colours["tr"] == colours["br"]
        assert colours["tl"][0] > 0.8  # red on the target's left
        # marker width in pixels: the red+blue pixels of each cube, from the rendered front view
        img = obs["front_image"].astype(int)
        red = (img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)
        blue = (img[..., 2] > 150) & (img[..., 0] < 90)
        pts = np.argwhere(red | blue)  # (M, 2) row, col
        groups = _two_clusters(pts)
        widths = [int(g[:, 1].max() - g[:, 1].min() + 1) for g in groups]
        spread = [int(np.abs(g - g.mean(0)).max()) for g in groups]
        assert all(3 <= w <= 7 for w in widths), widths  # each marker ~5 px wide
        assert max(spread) <= 5, spread  # two compact markers, not scattered colour
    env.close()


def _two_clusters(pts: np.ndarray) -> list[np.ndarray]:
    """Split pixel coordinates (M, 2) into the two markers (2-means seeded with two far-apart pixels)."""
    c = np.stack([pts[0], pts[np.argmax(np.abs(pts - pts[0]).sum(1))]]).astype(float)
    for _ in range(5):
        assign = np.argmin(((pts[:, None] - c[None]) ** 2).sum(-1), axis=1)
        c = np.stack([pts[assign == k].mean(0) for k in range(2)])
    return [pts[assign == k] for k in range(2)]


def test_state_names_the_target_and_initial_positions_are_params():
    task = get_task("push_marked")
    init = task.sample(np.random.default_rng(0), 32)
    np.testing.assert_allclose(init.params[:, 1:].reshape(32, 2, 2), init.obj_pos[..., :2])
    assert set(np.unique(init.params[:, 0])) == {0.0, 1.0}
    feats = task.goal_features(init.params)
    assert feats.shape == (32, 2) and np.all(feats.argmax(1) == init.params[:, 0])
    assert task.state_dim == 12


@pytest.mark.parametrize("bad_push", [0.0, 0.039])
def test_short_push_is_not_success(bad_push):
    task = get_task("push_marked")
    init = task.sample(np.random.default_rng(3), 1)
    from s2robot.envs.tasks import StateArrays

    pos = init.obj_pos.copy()
    t = int(init.params[0, 0])
    pos[0, t, 1] -= bad_push
    s = StateArrays(pos, init.obj_quat, np.zeros((1, 3)), np.zeros(1), init.params)
    ok, score = task.evaluate(s)
    assert not ok[0] and score[0] == pytest.approx(bad_push / task.push_distance)
    pos[0, t, 1] -= 0.002
    ok, _ = task.evaluate(StateArrays(pos, init.obj_quat, np.zeros((1, 3)), np.zeros(1), init.params))
    assert ok[0] == (bad_push + 0.002 >= task.push_distance)
