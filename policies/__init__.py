"""Policies on multiscale tokens: BC (MLP / GMM / transformer over history) and diffusion (U-Net / transformer).

    from s2robot.policies import build_policy
    policy = build_policy(cfg.policy, shape_meta, normalizer, encoder)
    loss = policy.compute_loss(batch); actions = policy.predict_action(obs)   # (B, n_action_steps, A)

See docs/policies.md.
"""

from s2robot.policies.base import BasePolicy, ShapeMeta
from s2robot.policies.factory import build_policy, parse_policy_config

__all__ = ["BasePolicy", "ShapeMeta", "build_policy", "parse_policy_config"]
