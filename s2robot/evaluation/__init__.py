"""Batched, seeded evaluation rollouts: ``from s2robot.evaluation import evaluate``.

Modules: ``env_pool`` (``StepResult`` and the env-pool interface), ``vector_env`` (spawn worker pool,
shared-memory observations), ``warp_pool`` (MuJoCo Warp worlds as a pool), ``env_config`` (env kwargs for a
policy and task), ``rollout`` (``evaluate``), ``metrics``
(Wilson interval), ``report`` (JSON, plot, videos), ``cli`` (the ``s2robot eval`` verb). ``evaluate`` is imported
lazily so that env worker processes, which import ``vector_env``, never pay for importing torch.
"""

from __future__ import annotations

__all__ = ["evaluate"]


def __getattr__(name: str):
    if name == "evaluate":
        from s2robot.evaluation.rollout import evaluate

        return evaluate
    raise AttributeError(f"module 's2robot.evaluation' has no attribute {name!r}")
