"""Env contracts: registration, spaces, reset/step, seed reproducibility, bad actions, state round trip, experts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from s2robot.envs import TASKS, make_env
from s2robot.envs import robot
from s2robot.envs.experts import make_expert
from s2robot.envs.tasks import PUSH_T_GOAL, StateArrays, get_task, t_coverage, t_points, yaw_quat

SIZE = 48


@pytest.fixture(scope="module", params=sorted(TASKS))
def env(request):
    e = make_env(request.param, image_size=SIZE)
    yield e
    e.close()


def test_registry_and_config_names():
    assert set(TASKS) == {"push_t", "lift_cube", "stack_cubes", "match_marker", "push_marked"}
    for name, env_id in TASKS.items():
        assert env_id in gym.registry
        assert get_task(name).env_id == env_id
    with pytest.raises(KeyError, match="unknown task"):
        make_env("no_such_task")


def test_spaces_and_step_contract(env):
    obs, info = env.reset(seed=1)
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert set(obs) == {"front_image", "wrist_image", "proprio"}
    assert env.observation_space.contains(obs)
    assert obs["front_image"].shape == (SIZE, SIZE, 3) and obs["front_image"].dtype == np.uint8
    assert obs["proprio"].shape == (robot.PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
    assert env.action_space.shape == (robot.ACTION_DIM,)
    assert {"success", "score"} <= set(info)
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert isinstance(info["success"], bool) and 0.0 <= info["score"] <= 1.0
    assert isinstance(term, bool) and isinstance(trunc, bool) and np.isscalar(reward)
    # images are not blank and the two cameras differ
    assert obs["front_image"].std() > 5 and not np.array_equal(obs["front_image"], obs["wrist_image"])


def test_seed_reproducible_bit_for_bit(env):
    actions = np.random.default_rng(0).uniform(env.action_space.low, env.action_space.high, (5, robot.ACTION_DIM))

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in actions:
            out.append(env.step(a.astype(np.float32))[0])
        return out

    a, b = rollout(7), rollout(7)
    for oa, ob in zip(a, b):
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
    c = rollout(8)
    assert not np.array_equal(a[0]["proprio"], c[0]["proprio"]) or not np.array_equal(
        a[0]["front_image"], c[0]["front_image"])


@pytest.mark.parametrize("bad, msg", [
    (np.zeros(3), "shape"),
    (np.zeros((1, 5)), "shape"),
    (np.array([0, np.nan, 0, 0, 0]), "NaN"),
    (np.array([0, 0, np.inf, 0, 0]), "NaN/Inf"),
    ("left", "numeric"),
])
def test_bad_actions_rejected(bad, msg):
    e = make_env("lift_cube", image_size=16, cameras=())
    e.reset(seed=0)
    with pytest.raises(ValueError, match=msg):
        e.step(bad)  # through gymnasium's wrappers
    with pytest.raises(ValueError, match=msg):
        e.unwrapped.step(bad)
    e.close()


def test_actions_are_clipped_to_workspace():
    e = make_env("lift_cube", cameras=())
    e.reset(seed=0)
    base = e.unwrapped
    for _ in range(30):
        e.step(np.array([1.0, 1.0, -1.0, 5.0, 1.0], np.float32))  # far beyond the bounds
    np.testing.assert_array_less(base.target_pos, robot.WORKSPACE_HIGH + 1e-9)
    np.testing.assert_array_less(robot.WORKSPACE_LOW - 1e-9, base.target_pos)
    assert abs(base.target_yaw) <= robot.YAW_LIMIT + 1e-9
    e.close()


def test_sim_state_round_trip(env):
    env.reset(seed=3)
    for _ in range(3):
        env.step(env.action_space.sample())
    base = env.unwrapped
    state = base.get_sim_state()
    img = base.render_camera("front")
    a = np.array([0.01, -0.01, 0.0, 0.0, 1.0], np.float32)
    ref = env.step(a)[0]
    env.reset(seed=99)
    base.set_sim_state(state)
    np.testing.assert_array_equal(base.render_camera("front"), img)
    np.testing.assert_array_equal(env.step(a)[0]["proprio"], ref["proprio"])
    with pytest.raises(ValueError, match="sim_state"):
        base.set_sim_state(state[:-1])


def test_ik_matches_forward_kinematics():
    e = make_env("lift_cube", cameras=())
    e.reset(seed=5)
    base = e.unwrapped
    np.testing.assert_allclose(base.data.site_xpos[base._ee_site], base.target_pos, atol=1e-6)
    e.close()


def test_push_t_coverage_vectorised():
    pts = t_points()
    goal = PUSH_T_GOAL
    poses = np.array([goal, goal + [0.005, 0, 0], goal + [0, 0, 0.1], goal + [0.3, 0, 0]])
    cov = t_coverage(poses, goal, pts)
    assert cov.shape == (4,)
    assert cov[0] == pytest.approx(1.0)
    assert 0.8 < cov[1] < 1.0 and 0.5 < cov[2] < 1.0 and cov[3] == 0.0
    # the task's evaluate agrees with t_coverage on a batch
    task = get_task("push_t")
    s = StateArrays(obj_pos=np.concatenate([poses[:, None, :2], np.zeros((4, 1, 1))], -1),
                    obj_quat=yaw_quat(poses[:, None, 2]), ee_pos=np.zeros((4, 3)), gripper_width=np.zeros(4),
                    params=np.zeros((4, 0)))
    success, score = task.evaluate(s)
    np.testing.assert_allclose(score, cov)
    assert success.tolist() == [True, False, False, False]


def test_batched_sampling_is_seeded():
    for name in TASKS:
        task = get_task(name)
        a = task.sample(np.random.default_rng(0), 16)
        b = task.sample(np.random.default_rng(0), 16)
        np.testing.assert_array_equal(a.obj_pos, b.obj_pos)
        assert a.obj_pos.shape == (16, len(task.objects), 3)
        if len(task.objects) > 1:  # objects never overlap
            d = np.linalg.norm(a.obj_pos[:, :, None, :2] - a.obj_pos[:, None, :, :2], axis=-1)
            d += np.eye(len(task.objects)) * 1.0
            assert d.min() > 0.06


def test_match_marker_patterns_need_the_inner_square():
    task = get_task("match_marker")
    init = task.sample(np.random.default_rng(1), 64)
    from s2robot.envs.tasks import MARKER_PATTERNS

    target = init.params[:, 0].astype(int)
    pats = MARKER_PATTERNS[init.params[:, 1:].astype(int)]  # (n, 3, 2)
    tp = pats[np.arange(64), target]
    assert all(len({tuple(p) for p in row}) == 3 for row in pats)  # distinct patterns
    same_outer = (pats[..., 0] == tp[:, None, 0]).sum(1)
    assert np.all(same_outer == 2)  # one distractor differs only by the inner square


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_succeeds_on_a_few_seeds(task):
    e = make_env(task, cameras=())
    expert = make_expert(task, e, seed=0)
    assert type(make_expert(TASKS[task], e)) is type(expert)  # gymnasium id works too
    wins = 0
    for seed in range(3):
        obs, info = e.reset(seed=seed)
        done = False
        while not done:
            obs, _, term, trunc, info = e.step(expert.act(obs))
            done = term or trunc
            assert e.observation_space.contains(obs)
        wins += info["success"]
    e.close()
    assert wins == 3


def test_stack_expert_lowers_while_it_aligns():
    """The stacking expert descends a funnel over cube B: by the time the held cube is within PLACE_XY of B the
    set-point is already near the placing height (a policy that sees the offset only roughly still lowers),
    instead of waiting at the carry height for a 5 mm alignment."""
    from s2robot.envs.tasks import STACK_HALVES

    e = make_env("stack_cubes", cameras=())
    expert = make_expert("stack_cubes", e, seed=0)
    base = e.unwrapped
    heights = []  # set-point height above the placing height when the expert starts its final lowering
    for seed in range(3):
        obs, info = e.reset(seed=seed)
        done, prev = False, None
        while not done:
            action = expert.act(obs)
            if expert.phase == "lower" and prev == "carry":
                b = base.state_arrays().obj_pos[0, 1]
                place_z = b[2] + STACK_HALVES[1] + STACK_HALVES[0] + 0.004
                heights.append(base.target_pos[2] - place_z)
            prev = expert.phase
            obs, _, term, trunc, info = e.step(action)
            done = term or trunc
        assert info["success"]
    e.close()
    assert len(heights) == 3
    # the carry height is >= 35 mm above the placing height; the funnel has come most of the way down
    assert max(heights) < 0.02, heights


def test_wrist_back_camera_sees_the_base_cube_during_the_carry_more_often_than_wrist():
    """``wrist_back`` sits 10 cm behind the hand and looks down past the fingers at 38 deg with an 80 deg field
    of view, so the held cube covers less of it and cube B is in view for more of the carry than in ``wrist``."""
    e = make_env("stack_cubes", image_size=SIZE, cameras=("wrist", "wrist_back"))
    expert = make_expert("stack_cubes", e, seed=0)
    seen = {"wrist": [], "wrist_back": []}
    for seed in range(6):
        obs, info = e.reset(seed=seed)
        done = False
        while not done:
            action = expert.act(obs)
            if expert.phase in ("carry", "lower"):
                for cam in seen:
                    im = obs[f"{cam}_image"].astype(int)
                    seen[cam].append(int(((im[..., 1] > 120) & (im[..., 0] < 90)).sum()) >= 5)  # B is green
            obs, _, term, trunc, info = e.step(action)
            done = term or trunc
    e.close()
    frac = {cam: float(np.mean(v)) for cam, v in seen.items()}
    assert len(seen["wrist"]) > 100
    assert frac["wrist_back"] >= frac["wrist"] + 0.05, frac


def test_overhead_camera_shows_the_push_t_block_larger_than_front():
    """``overhead`` looks down at 65 deg onto the table's middle 0.5 m square, so push_t's T covers about twice the
    pixels it covers in ``front`` (which frames the whole table from further away and lower)."""
    e = make_env("push_t", image_size=SIZE, cameras=("front", "overhead"))
    ratios = []
    for seed in range(4):
        obs, _ = e.reset(seed=seed)
        area = {}
        for cam in ("front", "overhead"):
            im = obs[f"{cam}_image"].astype(int)
            area[cam] = int(((im[..., 2] - im[..., 0]) > 25).sum())  # the T is the only blue-grey object
        assert area["front"] >= 10, area
        ratios.append(area["overhead"] / area["front"])
    e.close()
    assert min(ratios) >= 1.6, ratios


def test_gl_backend_selection_names_missing_libraries(monkeypatch):
    from s2robot.envs import rendering

    monkeypatch.setattr(rendering, "_loadable", lambda names: None)
    with pytest.raises(RuntimeError, match=r"libEGL\.so\.1.*libOSMesa\.so"):
        rendering.select_backend("")
    with pytest.raises(RuntimeError, match=r"libOSMesa\.so"):
        rendering.select_backend("osmesa")
    monkeypatch.setattr(rendering, "_loadable", lambda names: names[0] if "OSMesa" in names[0] else None)
    assert rendering.select_backend("") == "osmesa"  # EGL missing -> OSMesa fallback


def test_renderer_closed_on_close():
    e = make_env("lift_cube", image_size=16, cameras=("front",))
    e.reset(seed=0)
    assert e.unwrapped._renderer is not None
    e.close()
    assert e.unwrapped._renderer is None
    e.close()  # idempotent


def test_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    e = make_env("stack_cubes", image_size=16)
    check_env(e.unwrapped, skip_render_check=True)
    e.close()
