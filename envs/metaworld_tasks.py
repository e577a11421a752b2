"""Meta-World v3 tasks (``task=metaworld/<v3-task-name>``) as s2robot envs with their scripted experts.

Needs the ``metaworld`` package (3.1.1 pins ``mujoco==3.3.0``), which lives in the second venv built by
``scripts/setup_env.sh metaworld``; this module imports it lazily, so the main venv imports ``s2robot.envs`` fine.

Observation (``gymnasium.spaces.Dict``), the contract of the built-in tasks:
  ``"<camera>_image"``: uint8 (H, W, 3) upright RGB for each camera in ``cameras`` (``corner``, ``corner2``,
  ``corner3``, ``corner4``, ``topview``, ``behindGripper``, ``gripperPOV``);
  ``"proprio"``: float32 (4,) = hand position x, y, z and gripper opening (Meta-World's observation [0:4]).
Action: float32 (4,) = [dx, dy, dz, gripper] in [-1, 1] (Meta-World's own action).
``info["success"]`` (bool) and ``info["score"]`` (= success) every step; ``terminated`` once success is reached
(``terminate_on_success``).

Traps handled here (each checked by ``tests/test_metaworld.py``):
- ``gym.make("Meta-World/MT1", ...)`` ignores ``reset(seed=...)``; here ``reset(seed=s)`` seeds the task's own
  generator with ``s`` and lets the task draw its random vector (object and goal positions) from it
  (``seeded_rand_vec``), so the same seed gives the same layout bit for bit, in any process. (A frozen vector
  would hang: some tasks redraw until the layout is valid.)
- the goal-observable task class is used: the raw classes zero the goal entries of the state that the experts read.
- the ``corner*`` cameras render upside down; they are rotated by 180 degrees (a vertical flip would mirror them).
- shadows, reflections and skybox are off (``rendering.CameraRenderer``): on a CPU rasteriser they cost 4-7x;
  multisampling is off too (``offsamples = 0``, as in the built-in scenes), which halves the render time again.
- a v3 env raises when stepped past ``max_path_length`` (500); the TimeLimit (``max_episode_steps``) must not exceed it.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .rendering import CameraRenderer

PREFIX = "metaworld/"
ENV_ID_PREFIX = "s2robot/MetaWorld-"
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
#: cameras whose image comes out upside down from MuJoCo's renderer (fixed by a 180-degree rotation)
UPSIDE_DOWN = frozenset({"corner", "corner2", "corner3", "corner4"})
MAX_PATH_LENGTH = 500  # Meta-World v3: stepping past this raises
PROPRIO_LAYOUT = ["hand_x", "hand_y", "hand_z", "gripper_opening"]
ACTION_LAYOUT = ["dx", "dy", "dz", "gripper"]


def is_metaworld_task(task: str) -> bool:
    """True for ``metaworld/<name>`` and for its gymnasium id ``s2robot/MetaWorld-<name>``."""
    return task.startswith(PREFIX) or task.startswith(ENV_ID_PREFIX)


def task_name(task: str) -> str:
    """``metaworld/pick-place-v3`` or ``s2robot/MetaWorld-pick-place-v3`` -> ``pick-place-v3``."""
    for prefix in (PREFIX, ENV_ID_PREFIX):
        if task.startswith(prefix):
            return task[len(prefix):]
    return task


def _metaworld():
    try:
        import metaworld  # noqa: F401
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:
        raise ImportError(f"Meta-World tasks need the metaworld package ({e}); build its venv with "
                          "`scripts/setup_env.sh metaworld` (metaworld 3.1.1 pins mujoco==3.3.0)") from None
    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


def task_names() -> list[str]:
    """The 50 Meta-World v3 task names (``pick-place-v3``, ...)."""
    envs, _ = _metaworld()
    return sorted(k[: -len("-goal-observable")] for k in envs)


def env_id(task: str) -> str:
    """The gymnasium id of a Meta-World task; registers it (and checks the name) on first use."""
    name = task_name(task)
    gid = ENV_ID_PREFIX + name
    if gid not in gym.registry:
        envs, _ = _metaworld()
        if f"{name}-goal-observable" not in envs:
            raise KeyError(f"unknown Meta-World task {name!r}; choose one of {task_names()}")
        gym.register(id=gid, entry_point="s2robot.envs.metaworld_tasks:MetaWorldEnv", kwargs={"task": name},
                     max_episode_steps=MAX_PATH_LENGTH)
    return gid


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with seeded layouts, rendered cameras and the s2robot observation dict."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # frame_skip 5 x timestep 0.0025 s

    def __init__(self, task: str, image_size: int | tuple[int, int] = 224,
                 cameras: tuple[str, ...] | list[str] = ("corner", "gripperPOV"),
                 terminate_on_success: bool = True, render_mode: str | None = "rgb_array"):
        from .base import _image_hw

        envs, _ = _metaworld()
        self.task = task_name(task)
        key = f"{self.task}-goal-observable"
        if key not in envs:
            raise KeyError(f"unknown Meta-World task {self.task!r}; choose one of {task_names()}")
        self.cameras = tuple(cameras)
        for cam in self.cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown Meta-World camera {cam!r}; choose from {CAMERAS}")
        self.image_hw = _image_hw(image_size)
        self.render_mode = render_mode
        self.terminate_on_success = bool(terminate_on_success)
        self.mw = envs[key](seed=0)  # goal observable: the experts read the goal from the state
        self.mw.max_path_length = MAX_PATH_LENGTH
        self.mw.model.vis.quality.offsamples = 0  # no MSAA: halves CPU render time (27 -> 13 ms per 96 px camera)
        self._renderer = CameraRenderer(self.mw.model, *self.image_hw) if self.cameras else None
        obs = {f"{c}_image": spaces.Box(0, 255, (*self.image_hw, 3), np.uint8) for c in self.cameras}
        obs["proprio"] = spaces.Box(-np.inf, np.inf, (len(PROPRIO_LAYOUT),), np.float32)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, (len(ACTION_LAYOUT),), np.float32)
        self.raw_obs: np.ndarray | None = None  # Meta-World's full (39,) state, what the experts read
        self.proprio_layout, self.action_layout = list(PROPRIO_LAYOUT), list(ACTION_LAYOUT)

    # -- seeding ----------------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset to the layout of ``seed``: the task draws its random vector (and redraws it while the layout is
        invalid, e.g. goal too close to the object) from ``np_random`` seeded with ``seed``, never from the
        global numpy stream nor a vector frozen at construction."""
        super().reset(seed=seed)
        layout_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31))
        self.mw.seed(layout_seed)
        self.mw._freeze_rand_vec, self.mw.seeded_rand_vec = False, True
        raw, _ = self.mw.reset()
        self.raw_obs = np.asarray(raw, dtype=np.float64)
        return self._obs(), {"success": False, "score": 0.0}

    @property
    def layout_vector(self) -> np.ndarray:
        """float64 (K,): the random vector (object / goal positions) of the current episode."""
        return np.array(self.mw._last_rand_vec, dtype=np.float64)

    def step(self, action):
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != self.action_space.shape or not np.isfinite(action).all():
            raise ValueError(f"action must be a finite float array of shape {self.action_space.shape}, got "
                             f"{action.shape} {action}")
        raw, reward, _, truncated, info = self.mw.step(np.clip(action, -1.0, 1.0))
        self.raw_obs = np.asarray(raw, dtype=np.float64)
        success = bool(info.get("success", 0.0))
        out = {**info, "success": success, "score": float(success)}
        return self._obs(), float(reward), success and self.terminate_on_success, bool(truncated), out

    # -- observation ------------------------------------------------------------------------------------------------
    def render_camera(self, camera: str) -> np.ndarray:
        """uint8 (H, W, 3) upright RGB of ``camera`` (``corner*`` rotated by 180 degrees)."""
        if self._renderer is None:
            self._renderer = CameraRenderer(self.mw.model, *self.image_hw)
        image = self._renderer.render(self.mw.data, camera)
        return np.ascontiguousarray(image[::-1, ::-1]) if camera in UPSIDE_DOWN else image

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {f"{c}_image": self.render_camera(c) for c in self.cameras}
        obs["proprio"] = self.raw_obs[: len(PROPRIO_LAYOUT)].astype(np.float32)
        return obs

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera(self.cameras[0] if self.cameras else "corner")

    # -- simulator state (recorded by ``collect``) ------------------------------------------------------------------
    @property
    def sim_state_layout(self) -> dict[str, int]:
        m = self.mw.model
        return {"qpos": int(m.nq), "qvel": int(m.nv), "mocap_pos": 3 * int(m.nmocap),
                "mocap_quat": 4 * int(m.nmocap)}

    def get_sim_state(self) -> np.ndarray:
        """Flat float64 vector (blocks in ``sim_state_layout`` order)."""
        d = self.mw.data
        return np.concatenate([d.qpos, d.qvel, d.mocap_pos.ravel(), d.mocap_quat.ravel()]).astype(np.float64)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.mw.close()


class MetaWorldExpert:
    """Meta-World's scripted policy for the task, acting on the env's full state (``MetaWorldEnv.raw_obs``)."""

    def __init__(self, env, seed: int = 0):
        base = env.unwrapped
        _, policies = _metaworld()
        if base.task not in policies:
            raise KeyError(f"Meta-World has no scripted expert for {base.task!r}")
        self.base, self.policy = base, policies[base.task]()

    def act(self, obs: dict[str, Any] | None = None) -> np.ndarray:
        """float32 (4,) expert action for the env's current state (``obs`` is not needed: the expert reads the state)."""
        with warnings.catch_warnings():  # "Constant(s) may be too high": the actions are clipped to [-1, 1] here
            warnings.simplefilter("ignore", UserWarning)
            action = self.policy.get_action(self.base.raw_obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
