"""The MuJoCo Warp batched backend on warp's CPU device, against the CPU MuJoCo envs it must reproduce.

Stated tolerances (float32 warp vs float64 MuJoCo, same seed and action sequence):
- initial state: qpos / mocap / proprio within 1e-5 (float32 rounding), success equal, score within 1e-4;
- physics: object positions and the end-effector within 1 mm over the whole expert episode (lift_cube,
  stack_cubes, match_marker; measured <= 0.07 mm) and within 2 mm over the first 25 steps of push_t (sliding
  contact is chaotic: measured 0.3-0.9 mm at step 20, 3-4 mm at step 40, 2-3 cm after 120 steps);
- images (``front`` and ``wrist``, 48 px): mean absolute difference <= 2.5 grey levels and PSNR >= 27 dB against
  ``ManipulationEnv``'s MuJoCo renderer (measured MAD 0.4-1.3, PSNR 30-39 dB at 64 px).
Kernels compile once per model (tens of seconds on the first run) and are cached by warp afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco_warp")
pytest.importorskip("warp")

from s2robot.envs import make_env  # noqa: E402
from s2robot.envs.experts import make_expert  # noqa: E402
from s2robot.envs.warp_backend import WarpBatchEnv  # noqa: E402

TASK_NAMES = ("lift_cube", "push_t", "stack_cubes", "match_marker")
IMG = 48
CAMS = ("front", "wrist")
PARITY_STEPS = {"push_t": 25}  # other tasks: the whole expert episode
PARITY_TOL = {"push_t": 2e-3}  # metres; others 1e-3


@pytest.fixture(scope="module")
def envs():
    """Lazily built WarpBatchEnv per (task, cameras): 2 worlds, 48 px; closed at module end."""
    made: dict[tuple, WarpBatchEnv] = {}

    def get(task: str, cameras=CAMS) -> WarpBatchEnv:
        key = (task, tuple(cameras))
        if key not in made:
            made[key] = WarpBatchEnv(task, 2, image_size=IMG, cameras=cameras, device="cpu")
        return made[key]

    yield get
    for env in made.values():
        env.close()


def _image_metrics(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = max(float((d**2).mean()), 1e-12)
    return float(np.abs(d).mean()), 10 * np.log10(255.0**2 / mse)


def _cpu_expert_episode(task: str, seed: int, max_steps: int | None = None, cameras=CAMS) -> dict:
    """Run the scripted expert in the CPU env; record actions and what the warp run must reproduce."""
    env = make_env(task, image_size=IMG, cameras=cameras)
    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    expert = make_expert(task, env, seed=seed)
    rec = {"actions": [], "obj": [], "ee": [], "obs": [], "success": [], "score": []}
    for _ in range(max_steps or base.task.max_episode_steps):
        action = expert.act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        rec["actions"].append(action)
        rec["obj"].append(base.state_arrays().obj_pos[0])
        rec["ee"].append(obs["proprio"][:3])
        rec["obs"].append(obs)
        rec["success"].append(info["success"])
        rec["score"].append(info["score"])
        if terminated or truncated:
            break
    env.close()
    return rec


@pytest.mark.parametrize("task", TASK_NAMES)
def test_reset_matches_cpu_env(envs, task):
    env = envs(task)
    seeds = np.array([3, 11])
    obs = env.reset(seeds)
    success, score = env.evaluate()
    assert set(obs) == {"front_image", "wrist_image", "proprio"}
    assert obs["front_image"].shape == (2, IMG, IMG, 3) and obs["front_image"].dtype == torch.uint8
    assert obs["proprio"].shape == (2, 9) and obs["proprio"].dtype == torch.float32
    for w, seed in enumerate(seeds):
        cpu = make_env(task, image_size=IMG, cameras=CAMS)
        cobs, info = cpu.reset(seed=int(seed))
        d = cpu.unwrapped.data
        np.testing.assert_allclose(env.sim.qpos[w].numpy(), d.qpos, atol=1e-5)
        np.testing.assert_allclose(env.sim.mocap_pos[w].numpy(), d.mocap_pos, atol=1e-5)
        np.testing.assert_allclose(env.sim.mocap_quat[w].numpy(), d.mocap_quat, atol=1e-5)
        np.testing.assert_allclose(obs["proprio"][w].numpy(), cobs["proprio"], atol=1e-5)
        assert bool(success[w]) == info["success"]
        assert float(score[w]) == pytest.approx(info["score"], abs=1e-4)
        if env.sim.geom_rgba is not None:  # per-episode marker colours (match_marker)
            np.testing.assert_allclose(env.sim.geom_rgba[w].numpy(), cpu.unwrapped.model.geom_rgba, atol=1e-6)
        for cam in CAMS:
            mad, psnr = _image_metrics(obs[f"{cam}_image"][w].numpy(), cobs[f"{cam}_image"])
            assert mad <= 2.5 and psnr >= 27.0, f"{task} {cam} seed {seed}: MAD {mad:.2f}, PSNR {psnr:.1f} dB"
        cpu.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_physics_and_render_parity_with_cpu_mujoco(envs, task):
    """Replay the CPU expert's actions open loop in warp world 0: states and images track the CPU run."""
    rec = _cpu_expert_episode(task, seed=0, max_steps=PARITY_STEPS.get(task))
    env = envs(task)
    env.reset(np.array([0, 0]))
    tol = PARITY_TOL.get(task, 1e-3)
    obj_err, ee_err = [], []
    for k, action in enumerate(rec["actions"]):
        obs, reward, success, score = env.step(torch.as_tensor(np.stack([action, action])))
        obj_err.append(np.abs(env.sim.xpos[0, env.index.obj_body].numpy() - rec["obj"][k]).max())
        ee_err.append(np.abs(obs["proprio"][0, :3].numpy() - rec["ee"][k]).max())
        assert torch.equal(obs["proprio"][0], obs["proprio"][1]), "identical worlds diverged"
    assert max(obj_err) <= tol, f"{task}: object error {max(obj_err) * 1e3:.2f} mm at step {int(np.argmax(obj_err))}"
    assert max(ee_err) <= tol, f"{task}: ee error {max(ee_err) * 1e3:.2f} mm"
    assert float(score[0]) == pytest.approx(rec["score"][-1], abs=0.02)
    assert bool(success[0]) == rec["success"][-1]
    assert torch.equal(reward, score)
    for cam in CAMS:  # the final frame, after the arm moved and (except push_t) grasped
        mad, psnr = _image_metrics(obs[f"{cam}_image"][0].numpy(), rec["obs"][-1][f"{cam}_image"])
        assert mad <= 2.5 and psnr >= 27.0, f"{task} {cam}: MAD {mad:.2f}, PSNR {psnr:.1f} dB"


@pytest.mark.parametrize("task", TASK_NAMES)
def test_experts_succeed_through_warp(envs, task):
    """Closed loop: each world's scripted expert reads the warp state; every seed's outcome matches the CPU env's."""
    seeds = np.array([0, 1])
    env = envs(task, cameras=())
    env.reset(seeds)
    experts = [make_expert(task, env.world(i), seed=int(s)) for i, s in enumerate(seeds)]
    done = np.zeros(2, dtype=bool)
    for _ in range(env.max_episode_steps):
        actions = np.stack([e.act() for e in experts])
        _, _, success, _ = env.step(torch.as_tensor(actions))
        done |= success.numpy()
        if done.all():
            break
    cpu = [any(_cpu_expert_episode(task, int(s), cameras=())["success"]) for s in seeds]
    assert done.tolist() == cpu, f"{task}: warp successes {done.tolist()} vs CPU {cpu}"


def test_reset_by_mask_leaves_other_worlds_untouched(envs):
    env = envs("lift_cube", cameras=())
    rng = np.random.default_rng(0)
    acts = torch.as_tensor(rng.uniform(-1, 1, (10, 2, 5)) * np.array([0.03, 0.03, 0.03, 0.2, 1.0]),
                           dtype=torch.float32)

    env.reset(np.array([5, 5]))
    fresh = env.sim.qpos.clone()
    env.reset(np.array([1, 2]))
    ref = []
    for k in range(10):
        env.step(acts[k])
        ref.append(env.sim.qpos[0].clone())

    env.reset(np.array([1, 2]))
    for k in range(5):
        env.step(acts[k])
    before = env.sim.qpos[0].clone(), env.sim.qvel[0].clone()
    obs = env.reset(np.array([0, 5]), mask=np.array([False, True]))
    assert torch.equal(env.sim.qpos[0], before[0]) and torch.equal(env.sim.qvel[0], before[1])
    assert torch.equal(env.sim.qpos[1], fresh[1]), "masked world does not restart from its seed"
    assert int(env.episode_steps[0]) == 5 and int(env.episode_steps[1]) == 0
    assert obs["proprio"].shape == (2, 9)
    for k in range(5, 10):
        env.step(acts[k])
        assert torch.equal(env.sim.qpos[0], ref[k]), f"unreset world changed trajectory at step {k}"


def test_bad_inputs_raise_clear_errors(envs):
    env = envs("lift_cube", cameras=())
    with pytest.raises(ValueError, match="seeds must be 2 integers"):
        env.reset(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="mask must be bool"):
        env.reset(np.array([1, 2]), mask=np.array([1, 0]))
    env.reset(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 5\)"):
        env.step(torch.zeros(2, 4))
    bad = torch.zeros(2, 5)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf in worlds \[1\]"):
        env.step(bad)
    with pytest.raises(ValueError, match="unknown camera 'top'"):
        WarpBatchEnv("lift_cube", 1, cameras=("top",))
    with pytest.raises(KeyError, match="unknown task"):
        WarpBatchEnv("fold_laundry", 1)


def test_pool_adapter_matches_env_pool_interface():
    """WarpEnvPool: same obs spec as the CPU env, subset stepping holds the other worlds, StepResults filled."""
    from s2robot.evaluation.warp_pool import WarpEnvPool

    with WarpEnvPool("lift_cube", 2, image_size=IMG, cameras=("front",), device="cpu") as pool:
        cpu = make_env("lift_cube", image_size=IMG, cameras=("front",))
        assert pool.obs_spec == {k: (tuple(s.shape), np.dtype(s.dtype).str)
                                 for k, s in cpu.observation_space.spaces.items()}
        assert pool.action_shape == (5,) and pool.max_episode_steps == 80 and pool.fps == pytest.approx(10.0)
        res = pool.reset([0, 1], [3, 4])
        cobs, _ = cpu.reset(seed=4)
        np.testing.assert_allclose(pool.obs["proprio"][1], cobs["proprio"], atol=1e-5)
        target0 = pool.env.target_pos[0].clone()
        res = pool.step([1], np.array([[0.01, 0.0, 0.0, 0.0, 1.0]], dtype=np.float32))
        assert set(res) == {1} and res[1].ok and res[1].score is not None
        assert torch.equal(pool.env.target_pos[0], target0), "world 0 was not held"
        cobs, *_ = cpu.step(np.array([0.01, 0.0, 0.0, 0.0, 1.0], dtype=np.float32))
        np.testing.assert_allclose(pool.obs["proprio"][1], cobs["proprio"], atol=1e-4)
        with pytest.raises(ValueError, match="explicit seeds"):
            pool.reset([0], [None])
        cpu.close()
