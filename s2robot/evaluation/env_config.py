"""The env an evaluation runs: ``make_env`` keyword arguments from a task config, matched to what the policy saw.

Used by ``s2robot eval``, the demo and training's periodic rollouts; it imports no env code (the env itself is
built inside the worker processes, see :mod:`s2robot.evaluation.vector_env`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["env_kwargs_for", "match_policy"]


def env_kwargs_for(task_cfg: dict[str, Any]) -> dict[str, Any]:
    """``make_env`` keyword arguments from a task config section: image_size, cameras and its env_kwargs."""
    kw = dict(task_cfg.get("env_kwargs") or {})
    for key in ("image_size", "cameras"):
        if task_cfg.get(key) is not None:
            kw[key] = tuple(task_cfg[key]) if key == "cameras" else task_cfg[key]
    return kw


def match_policy(env_kwargs: dict[str, Any], policy, explicit: dict[str, Any]) -> dict[str, Any]:
    """Render what the policy was trained on: its ``shape_meta`` image size and cameras, unless set explicitly.

    A task config says 224 px while the demos were collected at 96 px (``collect image_size=96``): the policy's
    ``shape_meta.image_shape`` records what it actually saw, so evaluation renders that.
    """
    meta = getattr(policy, "shape_meta", None)
    out = dict(env_kwargs)
    if meta is None:
        return out
    if getattr(meta, "image_shape", None) and "image_size" not in explicit:
        h, w = int(meta.image_shape[0]), int(meta.image_shape[1])
        size = h if h == w else (h, w)
        if out.get("image_size") not in (None, size):
            print(f"[eval] rendering {size} px images as the policy was trained on (task config says "
                  f"{out['image_size']}); pass env_kwargs.image_size=... to override")
        out["image_size"] = size
    if getattr(meta, "cameras", None) is not None and "cameras" not in explicit:
        out["cameras"] = tuple(meta.cameras)  # () for a policy without images: nothing is rendered
    if getattr(meta, "state_dim", 0) and "state_obs" not in explicit:
        out["state_obs"] = True
    return out
