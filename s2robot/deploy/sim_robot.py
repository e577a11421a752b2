"""``SimRobot``: a built-in MuJoCo task (or any gymnasium env) behind the Robot interface, without ROS.

Lockstep: ``send_action`` steps the env once, ``get_observation`` returns the newest env observation with its
capture time. Use it to dry-run a deployment end to end (control loop, safety, recording) on a policy's own task,
and in tests. The actions it gets are in env units, exactly as the policy emits them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from s2robot.deploy.robot_interface import Robot, RobotDisconnected


class SimRobot(Robot):
    """``env``: a gymnasium env, or None to build ``make_env(task, image_size, cameras, **env_kwargs)``."""

    def __init__(self, task: str = "lift_cube", env=None, image_size: int | tuple[int, int] = 96,
                 cameras: tuple[str, ...] = ("front", "wrist"), env_kwargs: dict[str, Any] | None = None,
                 max_episode_steps: int | None = None):
        self.task, self.env = task, env
        self._make = dict(image_size=image_size, cameras=tuple(cameras), max_episode_steps=max_episode_steps,
                          **(env_kwargs or {}))
        self.cameras = tuple(cameras)
        self.action_dim = 0
        self._obs: dict[str, np.ndarray] | None = None
        self._obs_time = 0.0
        self.info: dict[str, Any] = {}
        self.success = False
        self.done = False
        self._connected = False

    def connect(self) -> None:
        if self.env is None:
            from s2robot.envs import make_env  # MuJoCo/GL only when the simulated robot connects

            self.env = make_env(self.task, **self._make)
        self.action_dim = int(np.prod(self.env.action_space.shape))
        self._connected = True

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode (``env.reset(seed=seed)``)."""
        if not self._connected:
            self.connect()
        self._obs, self.info = self.env.reset(seed=seed)
        self._obs_time = time.monotonic()
        self.success = bool(self.info.get("success", False))
        self.done = False
        return self._obs

    @property
    def is_connected(self) -> bool:
        return self._connected

    def get_observation(self):
        if not self._connected:
            raise RobotDisconnected("SimRobot is not connected")
        if self._obs is None:
            return None
        return self._obs, self._obs_time

    def send_action(self, action: np.ndarray) -> bool:
        if not self._connected or self.done:
            return False
        self._obs, _, term, trunc, self.info = self.env.step(np.asarray(action, dtype=np.float32))
        self._obs_time = time.monotonic()
        self.success = self.success or bool(self.info.get("success", False))
        self.done = bool(term or trunc)
        return True

    def close(self) -> None:
        if self.env is not None and self._connected:
            self.env.close()
        self._connected = False
