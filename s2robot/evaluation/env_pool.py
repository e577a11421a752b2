"""What the evaluator needs from a batch of envs: the per-env :class:`StepResult` and :class:`EnvPoolProtocol`.

Two pools implement it: :class:`~s2robot.evaluation.vector_env.EnvPool` (one MuJoCo env per spawned worker
process, observations in shared memory) and :class:`~s2robot.evaluation.warp_pool.WarpEnvPool` (N MuJoCo Warp
worlds in this process). This module imports neither torch nor mujoco (env worker processes import it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["StepResult", "EpisodeTally", "EnvPoolProtocol"]


@dataclasses.dataclass
class StepResult:
    """What one reset/step of one env returns (the observation itself is in the pool's ``obs`` buffers)."""

    ok: bool
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    score: float | None = None
    env_time: float = 0.0  # seconds spent inside env.reset/env.step (in the worker, for the process pool)
    timing: dict[str, float] | None = None  # optional finer split from info["timing"] (physics, render, ...)
    error: str | None = None


@dataclasses.dataclass
class EpisodeTally:
    """What one episode's :class:`StepResult` s add up to: the evaluator's per-episode record (and what a replay of
    the episode must reproduce, :mod:`s2robot.evaluation.replay_video`)."""

    index: int
    seed: int
    length: int = 0
    ret: float = 0.0
    success: bool = False
    max_score: float | None = None

    def observe(self, res: StepResult) -> None:
        self.ret += res.reward
        self.success = self.success or res.success
        if res.score is not None:
            self.max_score = res.score if self.max_score is None else max(self.max_score, res.score)

    def record(self, end: str, error: str | None = None) -> dict[str, Any]:
        return {"episode": self.index, "seed": self.seed, "success": bool(self.success and error is None),
                "max_score": self.max_score, "return": self.ret, "length": self.length, "end": end,
                "error": error}


class EnvPoolProtocol(Protocol):
    """``n_envs`` envs reset and stepped by index; what :func:`s2robot.evaluation.rollout.evaluate` drives.

    ``obs[key]``: ndarray (n_envs, *shape) with the latest observation of every env (``obs_spec[key]`` =
    (shape, dtype str)); ``action_shape``: one env's action shape, e.g. (5,); ``max_episode_steps`` / ``fps``: from
    the env (may be None); ``restarts``: how many envs were restarted after a failure.
    """

    n_envs: int
    obs: dict[str, np.ndarray]
    obs_spec: dict[str, tuple[tuple[int, ...], str]]
    action_shape: tuple[int, ...]
    max_episode_steps: int | None
    fps: float | None
    restarts: int

    def reset(self, indices: Sequence[int], seeds: Sequence[int | None]) -> dict[int, StepResult]:
        """Reset envs ``indices`` with ``seeds``; ``{i: StepResult}`` for each."""

    def step(self, indices: Sequence[int], actions: np.ndarray) -> dict[int, StepResult]:
        """Step envs ``indices`` with ``actions`` (len(indices), *action_shape); the others hold."""

    def alive(self, i: int) -> bool:
        """Whether env ``i`` can be reset/stepped (a dead worker cannot until :meth:`restart`)."""

    def restart(self, i: int) -> None:
        """Make env ``i`` usable again after a failure."""

    def close(self) -> None:
        """Release every env (processes, shared memory, device buffers)."""
