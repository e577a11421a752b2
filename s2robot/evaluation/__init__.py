"""Batched, seeded evaluation rollouts: ``from s2robot.evaluation import evaluate``.

Modules: ``vector_env`` (spawn worker pool, shared-memory observations), ``rollout`` (``evaluate``), ``metrics``
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
