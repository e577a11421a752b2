"""``build_policy``: a policy from its config section, the shape metadata, a normaliser and the frozen encoder.

The policy config (``configs/policy/<name>.yaml``) has ``name``, ``type`` ("bc" | "diffusion"), an ``obs``
section (:class:`~s2robot.policies.conditioning.ConditioningConfig`) and the head's options
(:class:`~s2robot.policies.bc.BCConfig` or :class:`~s2robot.policies.diffusion.DiffusionConfig`). Unknown or
invalid values raise a ``ValueError`` naming the key and the valid choices.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from s2robot.configtools import dataclass_from, section
from s2robot.policies.base import BasePolicy, ShapeMeta
from s2robot.policies.bc import BCConfig, BCPolicy
from s2robot.policies.conditioning import ConditioningConfig, ObsConditioner
from s2robot.policies.diffusion import DiffusionConfig, DiffusionPolicy

__all__ = ["build_policy", "parse_policy_config", "POLICY_TYPES"]

POLICY_TYPES = {"bc": (BCConfig, BCPolicy), "diffusion": (DiffusionConfig, DiffusionPolicy)}


def parse_policy_config(cfg: Mapping[str, Any]) -> tuple[str, Any, ConditioningConfig]:
    """Validate a policy config section -> (type, head config, conditioning config)."""
    d = section(cfg, "policy")
    d.pop("name", None)
    ptype = d.pop("type", None)
    if ptype not in POLICY_TYPES:
        raise ValueError(f"policy.type={ptype!r} is not one of {sorted(POLICY_TYPES)}")
    obs = dataclass_from(ConditioningConfig, d.pop("obs", None), "policy.obs")
    head = dataclass_from(POLICY_TYPES[ptype][0], d, "policy")
    return ptype, head, obs


def build_policy(
    cfg: Mapping[str, Any],
    shape_meta: ShapeMeta | Mapping[str, Any],
    normalizer: nn.Module | None = None,
    encoder: nn.Module | None = None,
) -> BasePolicy:
    """Build a policy.

    ``normalizer``: a fitted :class:`~s2robot.policies.normalizer.Normalizer` (``"action"``, ``"proprio"``); when
    None an empty one is created whose keys appear when a checkpoint's state dict is loaded.
    ``encoder``: the frozen token encoder for image inputs (None: cached tokens only).
    """
    from s2robot.policies.normalizer import Normalizer

    meta = shape_meta if isinstance(shape_meta, ShapeMeta) else ShapeMeta.from_dict(shape_meta)
    ptype, head_cfg, obs_cfg = parse_policy_config(cfg)
    if normalizer is None:
        shapes = {"action": meta.action_dim}
        if meta.proprio_dim:
            shapes["proprio"] = meta.proprio_dim
        if meta.state_width:
            shapes["state"] = meta.state_width
        normalizer = Normalizer(shapes)
    if obs_cfg.backbone == "resnet18":
        encoder = None  # the trainable baseline sees raw images only
    obs_conditioner = ObsConditioner(obs_cfg, meta, encoder)
    return POLICY_TYPES[ptype][1](head_cfg, meta, obs_conditioner, normalizer)
