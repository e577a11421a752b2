"""``ManipulationEnv``: the one gymnasium env class behind every task (the task object supplies what differs).

Observation (``gymnasium.spaces.Dict``):
  ``"<camera>_image"``: uint8 (H, W, 3) upright RGB for each camera in ``cameras`` (``front``, ``wrist``);
  ``"proprio"``: float32 (9,) = ee position (3), gripper width (1), arm joints j0..j4 (5) (see ``robot.py``);
  ``"state"`` (only with ``state_obs=True``): float32 (S,) privileged task state, ``Task.state_vector`` (object
  poses and the goal), the control-only upper bound for diagnosing vision.
Action: float32 (5,) = [dx, dy, dz, dyaw, gripper] (see ``robot.py``); components beyond the bounds are clipped,
a wrong shape or NaN/Inf raises ``ValueError``.
Control: ``control_hz`` (default 10 Hz) with ``n_substeps = 1 / (control_hz * timestep)`` physics steps
(timestep 0.002 s -> 50 substeps) per ``step``. Reward = the task score in [0, 1]; ``info["success"]`` and
``info["score"]`` every step; ``terminated`` on success when ``terminate_on_success``.
"""

from __future__ import annotations

from importlib import resources

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from . import robot
from .rendering import CameraRenderer
from .tasks import StateArrays, Task, get_task

KNOWN_CAMERAS = ("front", "overhead", "wrist", "wrist_back")


def _image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        h, w = (int(v) for v in image_size)
    if h < 8 or w < 8 or h > 1024 or w > 1024:
        raise ValueError(f"image_size must be between 8 and 1024 pixels, got {image_size}")
    return h, w


def load_model(task: Task) -> mujoco.MjModel:
    """Compile the task's MJCF (shipped in ``s2robot.envs/assets``)."""
    path = resources.files("s2robot.envs").joinpath("assets", task.xml)
    with resources.as_file(path) as p:
        return mujoco.MjModel.from_xml_path(str(p))


class ManipulationEnv(gym.Env):
    """Table-top manipulation with a mocap-driven arm; see the module docstring for spaces and control."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str | Task,
        image_size: int | tuple[int, int] = 224,
        cameras: tuple[str, ...] | list[str] = ("front", "wrist"),
        control_hz: float = 10.0,
        max_delta: float = robot.DEFAULT_MAX_DELTA,
        max_dyaw: float = robot.DEFAULT_MAX_DYAW,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
        state_obs: bool = False,
    ):
        self.task = get_task(task) if isinstance(task, str) else task
        self.cameras = tuple(cameras)
        for cam in self.cameras:
            if cam not in KNOWN_CAMERAS:
                raise ValueError(f"unknown camera {cam!r}; choose from {KNOWN_CAMERAS}")
        self.image_hw = _image_hw(image_size)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.terminate_on_success = bool(terminate_on_success)
        self.max_delta, self.max_dyaw = float(max_delta), float(max_dyaw)
        if not isinstance(state_obs, (bool, np.bool_)):
            raise ValueError(f"state_obs must be true or false, got {state_obs!r}")
        self.state_obs = bool(state_obs)

        self.model = load_model(self.task)
        self.data = mujoco.MjData(self.model)
        dt = self.model.opt.timestep
        self.n_substeps = max(1, int(round(1.0 / (control_hz * dt))))
        self.control_dt = self.n_substeps * dt
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.control_dt))}
        self._index_model()

        low, high = robot.action_bounds(self.max_delta, self.max_dyaw)
        self.action_space = spaces.Box(low=low, high=high, dtype=np.float32)
        h, w = self.image_hw
        obs_spaces = {f"{c}_image": spaces.Box(0, 255, (h, w, 3), np.uint8) for c in self.cameras}
        obs_spaces["proprio"] = spaces.Box(robot.PROPRIO_LOW, robot.PROPRIO_HIGH, dtype=np.float32)
        if self.state_obs:
            obs_spaces["state"] = spaces.Box(-np.inf, np.inf, (self.task.state_dim,), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self._renderer: CameraRenderer | None = None
        self._target_pos = np.zeros(3)
        self._target_yaw = 0.0
        self._params = np.zeros(self.task.n_params)
        self.episode_steps = 0

    @property
    def target_pos(self) -> np.ndarray:
        """Current end-effector set-point (3,) (the mocap target minus the hand offset)."""
        return self._target_pos.copy()

    @property
    def target_yaw(self) -> float:
        return self._target_yaw

    # ------------------------------------------------------------------ model indexing
    def _index_model(self) -> None:
        m = self.model
        self._arm_qadr = np.array([m.joint(j).qposadr[0] for j in robot.ARM_JOINTS])
        self._finger_qadr = np.array([m.joint(j).qposadr[0] for j in robot.FINGER_JOINTS])
        self._obj_body = np.array([m.body(b).id for b in self.task.objects], dtype=int)
        self._obj_qadr = np.array([m.joint(m.body(b).jntadr[0]).qposadr[0] for b in self.task.objects], dtype=int)
        self._ee_site = m.site("ee").id
        self._mocap = m.body("mocap").mocapid[0]

    @property
    def sim_state_layout(self) -> dict[str, int]:
        """Sizes of the blocks of ``get_sim_state()`` in order."""
        m = self.model
        return {"qpos": m.nq, "qvel": m.nv, "qacc_warmstart": m.nv, "mocap_pos": 3 * m.nmocap, "mocap_quat": 4 * m.nmocap,
                "ctrl": m.nu, "target_yaw": 1, "params": self.task.n_params}

    # ------------------------------------------------------------------ state
    def state_arrays(self) -> StateArrays:
        """Task state of this env with batch dim 1 (what ``task.evaluate`` consumes)."""
        d = self.data
        return StateArrays(
            obj_pos=d.xpos[self._obj_body][None].copy(),
            obj_quat=d.xquat[self._obj_body][None].copy(),
            ee_pos=d.site_xpos[self._ee_site][None].copy(),
            gripper_width=np.array([d.qpos[self._finger_qadr].sum()]),
            params=self._params[None].copy(),
        )

    def get_sim_state(self) -> np.ndarray:
        """Flat float64 vector restoring the episode exactly (blocks in ``sim_state_layout`` order)."""
        d = self.data
        return np.concatenate([d.qpos, d.qvel, d.qacc_warmstart, d.mocap_pos.ravel(), d.mocap_quat.ravel(), d.ctrl,
                               [self._target_yaw], self._params]).astype(np.float64)

    def set_sim_state(self, state: np.ndarray) -> None:
        """Inverse of ``get_sim_state`` (then ``mj_forward``)."""
        state = np.asarray(state, dtype=np.float64)
        sizes = self.sim_state_layout
        if state.shape != (sum(sizes.values()),):
            raise ValueError(f"sim_state must have shape ({sum(sizes.values())},) for {self.task.name}, got {state.shape}")
        parts, i = {}, 0
        for k, n in sizes.items():
            parts[k] = state[i:i + n]
            i += n
        d = self.data
        d.qpos[:], d.qvel[:], d.ctrl[:] = parts["qpos"], parts["qvel"], parts["ctrl"]
        d.qacc_warmstart[:] = parts["qacc_warmstart"]
        d.mocap_pos[:] = parts["mocap_pos"].reshape(-1, 3)
        d.mocap_quat[:] = parts["mocap_quat"].reshape(-1, 4)
        self._target_yaw = float(parts["target_yaw"][0])
        self._target_pos = d.mocap_pos[self._mocap] - np.array([0.0, 0.0, robot.HAND_TO_EE])
        self._params = parts["params"].copy()
        self.task.apply_params(self.model, self._params)
        mujoco.mj_forward(self.model, self.data)

    def _apply_init(self, init) -> None:
        """Write an ``InitState`` (batch of 1) into ``data``."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        ee, yaw = init.ee_pos[0], init.ee_yaw[0]
        d.qpos[self._arm_qadr] = robot.inverse_kinematics(ee, yaw)
        d.qpos[self._finger_qadr] = robot.FINGER_OPEN
        for k, adr in enumerate(self._obj_qadr):
            d.qpos[adr:adr + 3] = init.obj_pos[0, k]
            d.qpos[adr + 3:adr + 7] = init.obj_quat[0, k]
        pos, quat = robot.mocap_from_target(ee, yaw)
        d.mocap_pos[self._mocap], d.mocap_quat[self._mocap] = pos, quat
        d.ctrl[:] = robot.FINGER_OPEN
        self._target_pos, self._target_yaw = ee.copy(), float(yaw)
        self._params = init.params[0].copy()
        self.task.apply_params(m, self._params)
        mujoco.mj_forward(m, d)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._apply_init(self.task.sample(self.np_random, 1))
        self.episode_steps = 0
        success, score = self.task.evaluate(self.state_arrays())
        return self._obs(), {"success": bool(success[0]), "is_success": bool(success[0]), "score": float(score[0])}

    def step(self, action):
        act = robot.validate_action(action)
        pos, yaw, ctrl = robot.apply_action(self._target_pos, np.array(self._target_yaw), act,
                                            self.max_delta, self.max_dyaw)
        self._target_pos, self._target_yaw = pos, float(yaw)
        mpos, mquat = robot.mocap_from_target(pos, yaw)
        d = self.data
        d.mocap_pos[self._mocap], d.mocap_quat[self._mocap] = mpos, mquat
        d.ctrl[:2] = ctrl
        mujoco.mj_step(self.model, d, nstep=self.n_substeps)
        mujoco.mj_forward(self.model, d)  # kinematics of the final state (mj_step leaves them one substep old)
        self.episode_steps += 1
        success, score = self.task.evaluate(self.state_arrays())
        success, score = bool(success[0]), float(score[0])
        info = {"success": success, "is_success": success, "score": score}
        return self._obs(), score, success and self.terminate_on_success, False, info

    def _obs(self) -> dict[str, np.ndarray]:
        d = self.data
        obs = {f"{cam}_image": self.render_camera(cam) for cam in self.cameras}
        obs["proprio"] = np.concatenate([d.site_xpos[self._ee_site], [d.qpos[self._finger_qadr].sum()],
                                         d.qpos[self._arm_qadr]]).astype(np.float32)
        if self.state_obs:
            obs["state"] = self.task.state_vector(self.state_arrays())[0]
        return obs

    def render_camera(self, camera: str, data: mujoco.MjData | None = None) -> np.ndarray:
        """uint8 (H, W, 3) image of ``camera`` at the env's image size."""
        if self._renderer is None:
            self._renderer = CameraRenderer(self.model, *self.image_hw)
        return self._renderer.render(self.data if data is None else data, camera)

    def render(self):
        if self.render_mode == "rgb_array":
            return self.render_camera("front")
        return None

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
