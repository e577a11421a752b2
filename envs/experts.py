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
- ``PushMarkedExpert`` (push_marked): go above a point behind the target cube (robot side), lower the closed
  gripper to cube height, push it straight towards the camera, then lift away.
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

    PLACE_XY = 0.006  # lower onto the base once the held cube is this close to it in xy (m)
    FUNNEL_XY = 0.08  # ... and start descending from the carry height this far further out (m)

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
        # keep the held cube's offset from the ee when aligning over the base
        offset = cube[:2] - ee[:2]
        if self.phase == "carry":
            # a funnel: the set-point height falls with the held cube's xy distance from the base, so how far to
            # lower is a smooth function of what the cameras see, not a 5 mm / 0.08 rad threshold to wait out
            dist = np.linalg.norm(cube[:2] - base[:2])
            z = place_z + np.clip((dist - self.PLACE_XY) / self.FUNNEL_XY, 0.0, 1.0) * (carry_z - place_z)
            goal = np.array([base[0] - offset[0], base[1] - offset[1], z])
            if dist < self.PLACE_XY:
                self.phase = "lower"
            return self.move(goal, self.base.target_yaw, 1.0, self.speed)
        if self.phase == "lower":
            goal = np.array([base[0] - offset[0], base[1] - offset[1], place_z])
            if cube[2] - base[2] < STACK_HALVES[self.place] + half + 0.006:
                self.phase, self.timer = "release", 0
            return self.move(goal, self.base.target_yaw, 1.0, 0.5)
        if self.phase == "release":
            if self.timer >= self.release_steps:
                self.phase = "retreat"
            return self.move(tgt, self.base.target_yaw, -1.0)
        return self.move(tgt + np.array([0, 0, 0.03]), self.base.target_yaw, -1.0)



class PushTExpert(_Expert):
    """Closed-loop quasi-static pushing of the T block with the closed gripper (pusher ~ disk of radius 17 mm).

    A *primitive* is a contact point ``c`` and push direction ``f`` in the block frame: rotation pushes act on
    the bar ends / stem tip (torque sign chosen from the yaw error), translation pushes go through the centre of
    mass along the position error. The pusher travels to a pre-contact point (over the block at hover height when
    the straight path is blocked), descends, then tracks ``c + f * (v - R)`` so the block is pushed ``v`` per step.
    """

    Z_PUSH = 0.02
    Z_HOVER = 0.075
    RADIUS = 0.018
    # rotation contacts (local point, local push direction, torque sign)
    ROT = [
        ((0.05, T_BAR_Y + 0.015), (0.0, -1.0), -1), ((0.05, T_BAR_Y - 0.015), (0.0, 1.0), 1),
        ((-0.05, T_BAR_Y + 0.015), (0.0, -1.0), 1), ((-0.05, T_BAR_Y - 0.015), (0.0, 1.0), -1),
        ((0.015, T_BAR_Y - 0.095), (-1.0, 0.0), -1), ((-0.015, T_BAR_Y - 0.095), (1.0, 0.0), 1),
    ]
    _CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                        np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], -1)

    def new_episode(self):
        r = self.rng
        self.prim = None
        self.stage = "travel"
        self.push_steps = 0
        self.v_push = r.uniform(0.008, 0.014)
        self.travel_speed = r.uniform(0.7, 1.0)
        self.noise = r.uniform(0.0, 0.002)
        self.rot_trigger = r.uniform(0.1, 0.16)

    # ----------------------------------------------------------------- geometry helpers
    def _pose(self):
        s = self.base.state_arrays()
        return np.array([*s.obj_pos[0, 0, :2], quat_yaw(s.obj_quat[0, 0])])

    @staticmethod
    def _to_world(pose, local_pt, local_dir):
        c, s = np.cos(pose[2]), np.sin(pose[2])
        rot = np.array([[c, -s], [s, c]])
        return pose[:2] + rot @ np.asarray(local_pt), rot @ np.asarray(local_dir)

    @staticmethod
    def _to_local(pose, world_pts):
        c, s = np.cos(pose[2]), np.sin(pose[2])
        d = np.asarray(world_pts) - pose[:2]
        return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)

    def _disk_hits(self, pose, centres, margin=0.006):
        """(n,) True where a pusher disk centred at world ``centres`` (n, 2) overlaps the T."""
        centres = np.atleast_2d(centres)
        pts = centres[:, None] + (self.RADIUS + margin) * self._CIRCLE[None]
        pts = np.concatenate([pts, centres[:, None]], axis=1)
        return inside_t(self._to_local(pose, pts)).any(axis=1)

    def _path_clear(self, pose, a, b):
        ts = np.linspace(0, 1, 12)[:, None]
        return not self._disk_hits(pose, a[None] * (1 - ts) + b[None] * ts, margin=0.003).any()

    def _pre_point(self, pose, c_w, f_w):
        for back in np.arange(0.008, 0.12, 0.004):
            pre = c_w - f_w * (self.RADIUS + back)
            if not self._disk_hits(pose, pre[None])[0]:
                return pre
        return c_w - f_w * 0.12

    # ----------------------------------------------------------------- planning
    def _plan(self, pose, e, eth, pusher):
        if abs(eth) > 0.03 and (abs(eth) > self.rot_trigger or np.linalg.norm(e) < 0.004):
            best, best_score = None, -np.inf
            for pt, fd, sign in self.ROT:
                if sign != np.sign(eth):
                    continue
                c_w, f_w = self._to_world(pose, pt, fd)
                pre = self._pre_point(pose, c_w, f_w)
                if not self._reachable(pre):
                    continue
                score = f_w @ e - 0.3 * np.linalg.norm(pre - pusher)
                if score > best_score:
                    best, best_score = ("rot", np.array(pt), np.array(fd), 0.0), score
            if best is not None:
                return best
        if np.linalg.norm(e) < 1e-4:
            return None
        # push through the centre of mass along the error; if that pre-contact point is out of reach, the
        # reachable direction closest to it (the closed loop corrects the rest on later pushes)
        base_angle = np.arctan2(e[1], e[0])
        fallback = None
        for off in (0.0, 0.3, -0.3, 0.6, -0.6, 0.9, -0.9, 1.2, -1.2):
            u_w = np.array([np.cos(base_angle + off), np.sin(base_angle + off)])
            prim = self._through_com(pose, u_w) + (abs(off),)
            fallback = fallback or prim
            c_w, f_w = self._to_world(pose, prim[1], prim[2])
            if self._reachable(self._pre_point(pose, c_w, f_w)):
                return prim
        return fallback

    @staticmethod
    def _reachable(pt):
        return bool(np.all(np.abs(pt) <= [0.265, 0.235]))

    def _through_com(self, pose, u_w):
        s = np.arange(0.0, 0.15, 0.0005)
        local = self._to_local(pose, pose[:2] - s[:, None] * u_w)
        s_max = s[inside_t(local)].max()
        c_local = self._to_local(pose, (pose[:2] - s_max * u_w)[None])[0]
        f_local = self._to_local(np.array([0.0, 0.0, pose[2]]), u_w[None])[0]
        return ("trans", c_local, f_local)

    def _done(self, prim, e, eth, u_w):
        kind = prim[0]
        if kind == "rot":
            return abs(eth) < 0.015 or np.sign(eth) != self._rot_sign
        if abs(eth) > self.rot_trigger + 0.05:
            return True
        along = e @ u_w
        lateral = np.linalg.norm(e - along * u_w)
        off = prim[3]
        if off > 0 and self.push_steps > 6:  # detours are short; re-plan towards the goal
            return True
        return along < 0.0015 or lateral > max(0.004, (0.4 + np.tan(off)) * abs(along))

    # ----------------------------------------------------------------- control
    def compute_action(self):
        pose = self._pose()
        e = PUSH_T_GOAL[:2] - pose[:2]
        eth = float(wrap_angle(PUSH_T_GOAL[2] - pose[2]))
        tgt = self.base.target_pos
        pusher = tgt[:2]
        if self.prim is not None:
            c_w, f_w = self._to_world(pose, self.prim[1], self.prim[2])
            if self._done(self.prim, e, eth, f_w):
                self.prim = None
                if self.stage == "push":  # back off a little before re-planning
                    self.stage = "travel"
                    return self.move([*(pusher - f_w * 0.01), tgt[2]], 0.0, 1.0)
        if self.prim is None:
            self.prim = self._plan(pose, e, eth, pusher)
            self.stage = "travel"
            if self.prim is None:
                return self.move(tgt, 0.0, 1.0)
            self._rot_sign = np.sign(eth)
        c_w, f_w = self._to_world(pose, self.prim[1], self.prim[2])
        pre = self._pre_point(pose, c_w, f_w)
        low = tgt[2] < self.Z_PUSH + 0.02
        if self.stage == "travel":
            if np.linalg.norm(pusher - pre) < 0.004:
                self.stage = "descend"
            elif low and not self._path_clear(pose, pusher, pre):
                return self.move([*pusher, self.Z_HOVER], 0.0, 1.0, self.travel_speed)
            else:
                z = tgt[2] if low else self.Z_HOVER
                return self.move([*pre, z], 0.0, 1.0, self.travel_speed, self.noise)
        if self.stage == "descend":
            if tgt[2] <= self.Z_PUSH + 0.002:
                self.stage, self.push_steps = "push", 0
            else:
                return self.move([*pre, self.Z_PUSH], 0.0, 1.0, self.travel_speed)
        if self.prim[0] == "rot":
            v = np.clip(abs(eth) * 0.05, 0.002, self.v_push)
        else:
            v = np.clip(e @ f_w, 0.0015, self.v_push)
        self.push_steps += 1
        goal = c_w + f_w * (v - self.RADIUS)
        # never pull back towards the block's far side: limit the step to the push direction +- lateral correction
        return self.move([*goal, self.Z_PUSH], 0.0, 1.0)


class PushMarkedExpert(_Expert):
    """push_marked: push the target cube (from the task params) ``push_distance`` + margin towards -y."""

    BEHIND = 0.05  # pre-push point: this far behind (+y of) the cube centre
    Z_PUSH = 0.02

    def new_episode(self):
        r = self.rng
        self.phase = "approach"
        self.speed = r.uniform(0.6, 1.0)
        self.hover = r.uniform(0.06, 0.1)
        self.extra = r.uniform(0.01, 0.025)  # push beyond the success distance
        self.noise = r.uniform(0.0, 0.003)

    def compute_action(self):
        s = self.base.state_arrays()
        i = int(s.params[0, 0])
        cube = s.obj_pos[0, i]
        start_y = s.params[0, 2 + 2 * i]
        tgt = self.base.target_pos
        behind = np.array([cube[0], cube[1] + self.BEHIND, self.Z_PUSH])
        if self.phase == "approach":
            above = behind + np.array([0.0, 0.0, self.hover])
            far = np.linalg.norm(tgt[:2] - behind[:2]) > 0.03
            if np.linalg.norm(tgt[:2] - behind[:2]) < 0.006:
                self.phase = "descend"
            goal = above if far or tgt[2] > above[2] else np.array([behind[0], behind[1], tgt[2]])
            return self.move(goal, 0.0, 1.0, self.speed, self.noise if far else 0.0)
        if self.phase == "descend":
            if abs(tgt[2] - self.Z_PUSH) < 0.003:
                self.phase = "push"
            return self.move(behind, 0.0, 1.0, self.speed)
        if self.phase == "push":
            end_y = start_y - self.base.task.push_distance - self.extra
            if cube[1] <= end_y + 0.002:
                self.phase = "retreat"
            goal = np.array([cube[0], end_y + 0.02 - 0.002, self.Z_PUSH])  # the paddle's face is ~2 cm from its centre
            return self.move(goal, 0.0, 1.0, 0.5 * self.speed)
        return self.move(tgt + np.array([0.0, 0.02, 0.03]), 0.0, 1.0)


def make_expert(task: str, env, seed: int = 0):
    """Scripted expert for ``task`` (name or gymnasium id) acting in ``env`` (state read via ``env.unwrapped``)."""
    from . import TASKS
    from .metaworld_tasks import MetaWorldExpert, is_metaworld_task

    if is_metaworld_task(task):
        return MetaWorldExpert(env, seed)
    task = {v: k for k, v in TASKS.items()}.get(task, task)
    if task == "lift_cube":
        return PickPlaceExpert(env, seed, pick_index=0)
    if task == "stack_cubes":
        return PickPlaceExpert(env, seed, pick_index=0, place=1)
    if task == "match_marker":
        return PickPlaceExpert(env, seed, pick_index=None)
    if task == "push_t":
        return PushTExpert(env, seed)
    if task == "push_marked":
        return PushMarkedExpert(env, seed)
    raise KeyError(f"no expert for task {task!r}; experts exist for {sorted(TASKS)}")

