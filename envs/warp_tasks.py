"""Task glue for the warp backend: the built-in tasks' own functions applied to N worlds at once.

Nothing task-specific is written here. The task object (``s2robot.envs.tasks``) and the arm module
(``s2robot.envs.robot``) are the single source of truth for both backends; this module only

- looks up the model addresses they refer to (arm/finger joints, object bodies, the ``ee`` site, the mocap body);
- turns per-seed ``task.sample`` draws into a batched initial state (IK, mocap pose, open fingers), exactly as
  ``ManipulationEnv.reset(seed=s)`` does for one env (a test checks the two agree to float32 precision);
- gathers ``StateArrays`` for ``task.evaluate`` and per-world marker colours from ``task.apply_params``.

Seeds: world ``i`` reset with seed ``s`` draws ``task.sample(np_random(s), 1)`` with gymnasium's seeding, the same
generator ``ManipulationEnv.reset(seed=s)`` uses, so a seed gives the same episode on either backend. That draw is
the one per-world Python call of a reset (one seeded generator per world is what makes seeds backend-independent);
everything after it is batched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mujoco
import numpy as np
from gymnasium.utils import seeding

from . import robot
from .tasks import InitState, StateArrays, Task


@dataclass(frozen=True)
class ModelIndex:
    """Model addresses used by the arm and the task (numpy int arrays / ints)."""

    arm_qadr: np.ndarray  # (5,) qpos addresses of j0..j4
    finger_qadr: np.ndarray  # (2,) qpos addresses of the finger slides
    obj_body: np.ndarray  # (K,) body ids of the task objects
    obj_qadr: np.ndarray  # (K,) qpos address of each object's free joint
    ee_site: int
    mocap: int  # mocap index of the hand target body

    @classmethod
    def from_model(cls, model: mujoco.MjModel, task: Task) -> "ModelIndex":
        def body_free_qadr(name: str) -> int:
            body = model.body(name)
            if body.jntnum[0] != 1 or model.jnt_type[body.jntadr[0]] != mujoco.mjtJoint.mjJNT_FREE:
                raise ValueError(f"task object {name!r} must have exactly one free joint")
            return int(model.jnt_qposadr[body.jntadr[0]])

        return cls(
            arm_qadr=np.array([model.joint(j).qposadr[0] for j in robot.ARM_JOINTS]),
            finger_qadr=np.array([model.joint(j).qposadr[0] for j in robot.FINGER_JOINTS]),
            obj_body=np.array([model.body(b).id for b in task.objects], dtype=int),
            obj_qadr=np.array([body_free_qadr(b) for b in task.objects], dtype=int),
            ee_site=int(model.site("ee").id),
            mocap=int(model.body("mocap").mocapid[0]),
        )


def sample_init(task: Task, seeds: np.ndarray) -> InitState:
    """Seeded initial states for ``len(seeds)`` worlds, one gymnasium ``np_random(seed)`` draw each -> batched."""
    draws = [task.sample(seeding.np_random(int(s))[0], 1) for s in np.asarray(seeds).reshape(-1)]
    return InitState(**{f.name: np.concatenate([getattr(d, f.name) for d in draws]) for f in fields(InitState)})


@dataclass
class InitArrays:
    """Simulator values of an initial state for B worlds (float64 numpy), ready to write into the batched data."""

    qpos: dict[str, np.ndarray]  # "arm" (B, 5), "finger" (B,), "obj_pos" (B, K, 3), "obj_quat" (B, K, 4)
    mocap_pos: np.ndarray  # (B, 3)
    mocap_quat: np.ndarray  # (B, 4)
    ctrl: np.ndarray  # (B,) finger position target (both fingers)
    target_pos: np.ndarray  # (B, 3) ee set-point
    target_yaw: np.ndarray  # (B,)
    params: np.ndarray  # (B, n_params)


def init_arrays(init: InitState) -> InitArrays:
    """``InitState`` -> simulator values: arm by analytic IK, fingers open, hand mocap at the ee target."""
    mpos, mquat = robot.mocap_from_target(init.ee_pos, init.ee_yaw)
    b = len(init.ee_yaw)
    return InitArrays(
        qpos={"arm": robot.inverse_kinematics(init.ee_pos, init.ee_yaw), "finger": np.full(b, robot.FINGER_OPEN),
              "obj_pos": init.obj_pos, "obj_quat": init.obj_quat},
        mocap_pos=mpos, mocap_quat=mquat, ctrl=np.full(b, robot.FINGER_OPEN),
        target_pos=np.asarray(init.ee_pos, dtype=np.float64).copy(),
        target_yaw=np.asarray(init.ee_yaw, dtype=np.float64).copy(),
        params=np.asarray(init.params, dtype=np.float64),
    )


def state_arrays(index: ModelIndex, xpos: np.ndarray, xquat: np.ndarray, site_xpos: np.ndarray, qpos: np.ndarray,
                 params: np.ndarray) -> StateArrays:
    """Batched ``StateArrays`` (float64) from host copies of (N, nbody, 3), (N, nbody, 4), (N, nsite, 3), (N, nq)."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    return StateArrays(
        obj_pos=f64(xpos[:, index.obj_body]),
        obj_quat=f64(xquat[:, index.obj_body]),
        ee_pos=f64(site_xpos[:, index.ee_site]),
        gripper_width=f64(qpos[:, index.finger_qadr]).sum(axis=1),
        params=f64(params),
    )


def evaluate_chunked(task: Task, state: StateArrays, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``task.evaluate`` over N worlds in chunks (push_t rasterises (B, 6k) points; chunks bound the memory)."""
    n = state.ee_pos.shape[0]
    succ, score = [], []
    for i in range(0, n, chunk):
        part = StateArrays(**{f.name: getattr(state, f.name)[i:i + chunk] for f in fields(StateArrays)})
        s, c = task.evaluate(part)
        succ.append(np.asarray(s, dtype=bool))
        score.append(np.asarray(c, dtype=np.float64))
    return np.concatenate(succ), np.concatenate(score)


def params_geom_rgba(task: Task, scratch: mujoco.MjModel, params: np.ndarray) -> np.ndarray | None:
    """Per-world geom colours (B, ngeom, 4) that ``task.apply_params`` sets; None for tasks without params.

    ``scratch`` is a private copy of the model (its ``geom_rgba`` is overwritten). Only ``geom_rgba`` is carried
    to the warp model; a task whose ``apply_params`` changes other model fields raises here.
    """
    if task.n_params == 0:
        return None
    base = scratch.geom_rgba.copy()
    probe = {"geom_size": scratch.geom_size.copy(), "body_mass": scratch.body_mass.copy(),
             "geom_friction": scratch.geom_friction.copy(), "mat_rgba": scratch.mat_rgba.copy()}
    out = np.empty((len(params), *base.shape), dtype=np.float32)
    for i, p in enumerate(np.asarray(params)):
        scratch.geom_rgba[:] = base
        task.apply_params(scratch, p)
        out[i] = scratch.geom_rgba
    for name, before in probe.items():
        if not np.array_equal(getattr(scratch, name), before):
            raise NotImplementedError(f"task {task.name!r}: apply_params changes model.{name}; the warp backend "
                                      "only batches geom_rgba per world")
    scratch.geom_rgba[:] = base
    return out
