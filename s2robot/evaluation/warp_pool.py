"""The MuJoCo Warp batch env behind the evaluator's env-pool interface (``env_pool.EnvPoolProtocol``).

``s2robot eval backend=warp`` steps every world of one :class:`~s2robot.envs.warp_backend.WarpBatchEnv` in this
process instead of one MuJoCo env per worker process (:class:`~s2robot.evaluation.vector_env.EnvPool`).
Importing this module needs the optional ``mujoco-warp`` / ``warp-lang`` packages only when a pool is built.
"""

from __future__ import annotations

import time
import traceback
from typing import Sequence

import numpy as np
import torch

from s2robot.envs import robot
from s2robot.envs.warp_backend import WarpBatchEnv
from s2robot.evaluation.env_pool import StepResult

__all__ = ["WarpEnvPool"]


class WarpEnvPool:
    """``WarpBatchEnv`` behind the interface of the evaluator's process pool (``s2robot.evaluation.vector_env.
    EnvPool``): ``reset(indices, seeds)`` / ``step(indices, actions)`` -> ``{i: StepResult}``, observations in
    ``obs[key]`` numpy (n_envs, ...), plus ``obs_spec``, ``action_shape``, ``max_episode_steps``, ``fps``,
    ``alive``, ``restart``, ``restarts``, ``close``. So ``backend="warp"`` in the evaluator is a one-line choice of
    pool; the same seeds, success logic, reports and videos apply.

    All worlds are stepped together; worlds not in ``indices`` get a hold action (no motion, same gripper command).
    Observations are copied to host numpy here (free on CPU; one device-to-host copy on CUDA). A fully on-device
    loop uses ``WarpBatchEnv`` directly.
    """

    def __init__(self, task: str, n_envs: int, image_size: int = 84, cameras: Sequence[str] = ("front", "wrist"),
                 device: str | torch.device = "auto", **env_kwargs) -> None:
        self.env = WarpBatchEnv(task, n_envs, image_size=image_size, cameras=cameras, device=device, **env_kwargs)
        self.n_envs = int(n_envs)
        self.terminate_on_success = self.env.reference.terminate_on_success
        space = self.env.reference.observation_space
        self.obs_spec = {k: (tuple(s.shape), np.dtype(s.dtype).str) for k, s in space.spaces.items()}
        self.obs = {k: np.zeros((self.n_envs, *shape), dtype=np.dtype(dt)) for k, (shape, dt) in self.obs_spec.items()}
        self.action_shape = (robot.ACTION_DIM,)
        self.max_episode_steps = self.env.max_episode_steps
        self.fps = 1.0 / self.env.control_dt
        self.restarts = 0
        self._seeds = np.zeros(self.n_envs, dtype=np.int64)

    def _results(self, indices, obs, success=None, score=None, elapsed: float = 0.0):
        idx = np.asarray(indices, dtype=np.int64)
        for key, buf in self.obs.items():
            buf[idx] = obs[key][torch.as_tensor(idx, device=self.env.device)].cpu().numpy()
        if success is None:
            success, score = self.env.evaluate()
        succ, sc = success.cpu().numpy(), score.cpu().numpy()
        share = elapsed / max(1, len(idx))
        return {int(i): StepResult(ok=True, reward=float(sc[i]), success=bool(succ[i]), score=float(sc[i]),
                                   terminated=bool(succ[i]) and self.terminate_on_success, env_time=share)
                for i in idx}

    def reset(self, indices, seeds):
        """Reset worlds ``indices`` with ``seeds`` (ints; the warp backend needs explicit seeds)."""
        if any(s is None for s in seeds):
            raise ValueError("the warp backend resets with explicit seeds; got None")
        t0 = time.perf_counter()
        mask = np.zeros(self.n_envs, dtype=bool)
        mask[list(indices)] = True
        self._seeds[list(indices)] = [int(s) for s in seeds]
        obs = self.env.reset(self._seeds, mask)
        return self._results(indices, obs, elapsed=time.perf_counter() - t0)

    def step(self, indices, actions):
        """Step worlds ``indices`` with ``actions`` (len(indices), 5); the others hold still.

        Failures end episodes, never the evaluation: a raising batched step is an error for every world in
        ``indices``; a world whose state went non-finite is an error for that world only."""
        t0 = time.perf_counter()
        env = self.env
        opening = env.sim.ctrl[:, 0].to(torch.float64) / robot.FINGER_OPEN  # gripper command of the last step
        full = torch.zeros(self.n_envs, robot.ACTION_DIM, dtype=torch.float32, device=env.device)
        full[:, 4] = (1.0 - 2.0 * opening).to(torch.float32)
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=env.device)
        full[idx] = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=env.device)
        try:
            obs, _, success, score = env.step(full)
        except Exception:  # noqa: BLE001 - one batched step failed: end these episodes, not the evaluation
            err = f"MuJoCo-Warp step raised (all worlds stepped together):\n{traceback.format_exc()}"
            return {int(i): StepResult(False, error=err) for i in indices}
        results = self._results(indices, obs, success, score, time.perf_counter() - t0)
        finite = (torch.isfinite(env.sim.qpos).all(dim=1) & torch.isfinite(env.sim.qvel).all(dim=1)).cpu().numpy()
        for i in results:
            if not finite[i]:  # a diverged world: report it like a crashed env; the evaluator resets it
                results[i] = StepResult(False, error=f"world {i}: non-finite physics state (qpos/qvel) after the step")
        return results

    def alive(self, i: int) -> bool:
        return self.env.sim is not None

    def restart(self, i: int) -> None:
        """Nothing to restart in-process: world ``i`` is simply reset again by the caller."""
        self.restarts += 1

    def close(self) -> None:
        if self.env.sim is not None:
            self.env.close()

    def __enter__(self) -> "WarpEnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
