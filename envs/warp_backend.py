"""A built-in s2robot task in N MuJoCo Warp worlds: the batched, torch-facing counterpart of ``make_env(task)``.

``WarpBatchEnv`` adds the task logic (MJCF, seeded initial states, ``robot.apply_action`` control, success and
score, observations) on top of the task-agnostic simulator :class:`~s2robot.envs.warp_sim.WarpSim`;
``WorldView`` shows one world to the scripted experts as if it were a ``ManipulationEnv``. The evaluator's
adapter (the env-pool interface) is :class:`s2robot.evaluation.warp_pool.WarpEnvPool`. See ``docs/warp.md``.
"""

from __future__ import annotations

from typing import Sequence

import mujoco
import numpy as np
import torch

from s2robot.device import resolve_device

from . import robot
from .base import ManipulationEnv, load_model
from .tasks import get_task
from .warp_sim import WarpSim
from .warp_tasks import ModelIndex, evaluate_chunked, init_arrays, params_geom_rgba, sample_init, state_arrays

__all__ = ["WarpBatchEnv", "WorldView"]


def _host(t: torch.Tensor) -> np.ndarray:
    """Tensor -> float64 numpy on the host (a view-then-cast on CPU; one small device-to-host copy on CUDA)."""
    return t.detach().to("cpu").numpy().astype(np.float64, copy=False)


class WarpBatchEnv:
    """A built-in s2robot task in N MuJoCo Warp worlds: batched reset/step, torch observations on ``device``.

    Same MJCF, control mapping (``robot.apply_action``), seeded initial states (``task.sample``) and success/score
    (``task.evaluate``) as ``s2robot.envs.make_env(task)``; see ``docs/warp.md``.

    Args:
        task: task name (``s2robot.envs.TASKS`` key).
        n_worlds: number of parallel worlds N.
        image_size: square camera resolution (H = W).
        cameras: camera names (``front``, ``wrist``); empty for physics only (no ``*_image`` keys).
        device: ``"cpu"`` or ``"cuda[:i]"`` (``"auto"``: CUDA if present); physics, images and proprio live there.
        use_graph: replay captured graphs for step/render (CUDA graphs on GPU, warp CPU graphs on CPU).
        nconmax, njmax: per-world contact / constraint-row capacity. Default 16 (K + 1) contacts and
            4 nconmax + 32 rows for K task objects (the experts peak at 20 contacts / 86 rows in match_marker on
            CPU MuJoCo; mujoco_warp's own default of 64 rows overflows there).
        **env_kwargs: ``ManipulationEnv`` options (``control_hz``, ``max_delta``, ``max_dyaw``, ...).

    Observation dict (torch, leading dim N): ``"<cam>_image"`` uint8 (N, H, W, 3) upright RGB and ``"proprio"``
    float32 (N, 9) = [ee xyz, gripper width, j0..j4]. Action: float (N, 5) = [dx, dy, dz, dyaw, gripper].
    """

    def __init__(self, task: str, n_worlds: int, image_size: int = 84, cameras: Sequence[str] = ("front", "wrist"),
                 device: str | torch.device = "cpu", use_graph: bool = True, nconmax: int | None = None,
                 njmax: int | None = None, **env_kwargs) -> None:
        self.task = get_task(task)
        # the CPU env is the reference for model, substeps, action bounds and kwargs validation; it never renders
        self.reference = ManipulationEnv(self.task, image_size=image_size, cameras=tuple(cameras), render_mode=None,
                                         **env_kwargs)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.n_worlds = int(n_worlds)
        self.model = self.reference.model
        self.index = ModelIndex.from_model(self.model, self.task)
        self.n_substeps = self.reference.n_substeps
        self.control_dt = self.reference.control_dt
        self.max_delta, self.max_dyaw = self.reference.max_delta, self.reference.max_dyaw
        self.action_space = self.reference.action_space
        self.max_episode_steps = self.task.max_episode_steps
        self._scratch = self._copy_model() if self.task.n_params else None
        n_obj = len(self.task.objects)
        nconmax = int(nconmax) if nconmax is not None else 16 * (n_obj + 1)
        njmax = int(njmax) if njmax is not None else 4 * nconmax + 32
        self.sim = WarpSim(self.model, self.n_worlds, resolve_device(device), n_substeps=self.n_substeps,
                           cameras=self.cameras, image_size=self.image_size, use_graph=use_graph,
                           per_world_rgba=self.task.n_params > 0, nconmax=nconmax, njmax=njmax)
        self.device = self.sim.device
        n, dev = self.n_worlds, self.device
        self.target_pos = torch.zeros(n, 3, dtype=torch.float64, device=dev)
        self.target_yaw = torch.zeros(n, dtype=torch.float64, device=dev)
        self.params = torch.zeros(n, self.task.n_params, dtype=torch.float64, device=dev)
        self.episode_steps = torch.zeros(n, dtype=torch.int64, device=dev)
        self._obj_body = torch.as_tensor(self.index.obj_body, device=dev)
        self._arm_qadr = torch.as_tensor(self.index.arm_qadr, device=dev)
        self._finger_qadr = torch.as_tensor(self.index.finger_qadr, device=dev)
        self._seeded = torch.zeros(n, dtype=torch.bool, device=dev)

    def _copy_model(self) -> mujoco.MjModel:
        return load_model(self.task)

    # ------------------------------------------------------------------ reset
    def reset(self, seeds, mask=None) -> dict[str, torch.Tensor]:
        """Reset the worlds where ``mask`` is true (all when None) to the seeded initial states.

        Args:
            seeds: int (N,) array/tensor; world ``i`` uses ``seeds[i]`` (entries outside ``mask`` are ignored).
            mask: bool (N,) array/tensor, or None for every world.
        Returns: the observation dict of all N worlds (see the class docstring).
        """
        n = self.n_worlds
        seeds = np.asarray(seeds.cpu() if isinstance(seeds, torch.Tensor) else seeds).reshape(-1)
        if seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds must be {n} integers (one per world), got {seeds.dtype} {seeds.shape}")
        mask_np = np.ones(n, dtype=bool) if mask is None else np.asarray(
            mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        if mask_np.dtype != bool or mask_np.shape != (n,):
            raise ValueError(f"mask must be bool of shape ({n},), got {mask_np.dtype} {mask_np.shape}")
        idx_np = np.flatnonzero(mask_np)
        if len(idx_np) == 0:
            return self.observe()
        init = init_arrays(sample_init(self.task, seeds[idx_np]))
        mask_t = torch.as_tensor(mask_np, device=self.device)
        idx = torch.as_tensor(idx_np, device=self.device)
        dev, f32 = self.device, torch.float32
        as_t = lambda a, dtype=f32: torch.as_tensor(np.asarray(a), dtype=dtype, device=dev)  # noqa: E731
        sim, ix = self.sim, self.index
        sim.reset(mask_t)  # qpos0, zero velocities/controls, warm-start and contacts cleared
        qpos = sim.qpos[idx]
        qpos[:, self._arm_qadr] = as_t(init.qpos["arm"])
        qpos[:, self._finger_qadr] = as_t(init.qpos["finger"])[:, None]
        for k, adr in enumerate(ix.obj_qadr):
            qpos[:, adr:adr + 3] = as_t(init.qpos["obj_pos"][:, k])
            qpos[:, adr + 3:adr + 7] = as_t(init.qpos["obj_quat"][:, k])
        sim.qpos[idx] = qpos
        sim.mocap_pos[idx, ix.mocap] = as_t(init.mocap_pos)
        sim.mocap_quat[idx, ix.mocap] = as_t(init.mocap_quat)
        sim.ctrl[idx] = as_t(init.ctrl)[:, None].expand(-1, sim.ctrl.shape[1])
        self.target_pos[idx] = as_t(init.target_pos, torch.float64)
        self.target_yaw[idx] = as_t(init.target_yaw, torch.float64)
        self.params[idx] = as_t(init.params, torch.float64)
        rgba = params_geom_rgba(self.task, self._scratch, init.params) if self._scratch is not None else None
        if rgba is not None:
            sim.geom_rgba[idx] = as_t(rgba)
        self.episode_steps[idx] = 0
        self._seeded[idx] = True
        sim.forward()
        return self.observe()

    # ------------------------------------------------------------------ step
    def step(self, actions: torch.Tensor):
        """Apply one action per world (float (N, 5)), advance ``n_substeps`` physics steps, render.

        Returns ``(obs, reward, success, score)``: the observation dict, float32 (N,) reward (= score, as the CPU
        env), bool (N,) success and float32 (N,) score in [0, 1], all on ``device``.
        """
        if not bool(self._seeded.all()):
            raise RuntimeError(f"worlds {torch.flatnonzero(~self._seeded).tolist()[:8]} were never reset; "
                               "call reset(seeds) first")
        actions = torch.as_tensor(actions)
        a_dim = robot.ACTION_DIM
        if actions.shape != (self.n_worlds, a_dim):
            raise ValueError(f"actions must have shape ({self.n_worlds}, {a_dim}) = (n_worlds, "
                             f"[dx, dy, dz, dyaw, gripper]), got {tuple(actions.shape)}")
        act = _host(actions)
        bad = ~np.isfinite(act).all(axis=1)
        if bad.any():
            raise ValueError(f"actions contain NaN/Inf in worlds {np.flatnonzero(bad).tolist()[:16]}")
        pos, yaw, ctrl = robot.apply_action(_host(self.target_pos), _host(self.target_yaw), act,
                                            self.max_delta, self.max_dyaw)
        mpos, mquat = robot.mocap_from_target(pos, yaw)
        dev, f32, sim, m = self.device, torch.float32, self.sim, self.index.mocap
        self.target_pos.copy_(torch.as_tensor(pos, device=dev))
        self.target_yaw.copy_(torch.as_tensor(yaw, device=dev))
        sim.mocap_pos[:, m] = torch.as_tensor(mpos, dtype=f32, device=dev)
        sim.mocap_quat[:, m] = torch.as_tensor(mquat, dtype=f32, device=dev)
        sim.ctrl[:, :ctrl.shape[1]] = torch.as_tensor(ctrl, dtype=f32, device=dev)
        sim.step()
        self.episode_steps += 1
        success, score = self.evaluate()
        return self.observe(), score.clone(), success, score

    # ------------------------------------------------------------------ task state, success, observations
    def state_arrays(self, worlds=None):
        """``StateArrays`` (float64 numpy) of all worlds, or of the listed world indices, for ``task.evaluate``."""
        sim = self.sim
        sel = slice(None) if worlds is None else torch.as_tensor(np.atleast_1d(worlds), device=self.device)
        return state_arrays(self.index, _host(sim.xpos[sel]), _host(sim.xquat[sel]), _host(sim.site_xpos[sel]),
                            _host(sim.qpos[sel]), _host(self.params[sel]))

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Task success bool (N,) and score float32 (N,) of the current states, on ``device``."""
        success, score = evaluate_chunked(self.task, self.state_arrays())
        return (torch.as_tensor(success, device=self.device),
                torch.as_tensor(score, dtype=torch.float32, device=self.device))

    def proprio(self) -> torch.Tensor:
        """float32 (N, 9): ee position, gripper width, arm joints (same layout as the CPU env)."""
        sim = self.sim
        width = sim.qpos[:, self._finger_qadr].sum(dim=1, keepdim=True)
        return torch.cat([sim.site_xpos[:, self.index.ee_site], width, sim.qpos[:, self._arm_qadr]], dim=1)

    def observe(self) -> dict[str, torch.Tensor]:
        """Observation dict of the current state: rendered images (if cameras) and proprio, on ``device``."""
        obs = {f"{cam}_image": img for cam, img in self.sim.render().items()}
        obs["proprio"] = self.proprio()
        return obs

    def world(self, i: int) -> "WorldView":
        """A single-world view with the attributes ``s2robot.envs.experts`` reads (for scripted experts)."""
        if not 0 <= int(i) < self.n_worlds:
            raise IndexError(f"world {i} out of range [0, {self.n_worlds})")
        return WorldView(self, int(i))

    def close(self) -> None:
        """Release the warp arrays and the reference env."""
        self.reference.close()
        self.sim = None


class WorldView:
    """World ``i`` of a ``WarpBatchEnv`` seen as one env by the scripted experts (``make_expert(task, view)``).

    Exposes what ``ManipulationEnv`` exposes to them: ``unwrapped``, ``task``, ``max_delta``, ``max_dyaw``,
    ``episode_steps``, ``target_pos`` (3,), ``target_yaw`` and ``state_arrays()`` (batch of 1), read from the
    batched state (host copies of a few numbers).
    """

    def __init__(self, env: WarpBatchEnv, i: int) -> None:
        self.env, self.i = env, i
        self.task, self.max_delta, self.max_dyaw = env.task, env.max_delta, env.max_dyaw

    @property
    def unwrapped(self) -> "WorldView":
        return self

    @property
    def episode_steps(self) -> int:
        return int(self.env.episode_steps[self.i])

    @property
    def target_pos(self) -> np.ndarray:
        return _host(self.env.target_pos[self.i]).copy()

    @property
    def target_yaw(self) -> float:
        return float(self.env.target_yaw[self.i])

    def state_arrays(self):
        return self.env.state_arrays([self.i])
