"""s2robot: robot-manipulation policies on frozen multiscale (S2) vision tokens.

Sub-packages: ``s2robot.envs`` (MuJoCo tasks), ``s2robot.datasets`` (zarr demonstrations, sampler, feature
cache), ``s2robot.policies`` (BC and diffusion heads), ``s2robot.encoders`` + ``s2robot.s2`` (frozen multiscale
encoders), ``s2robot.training``, ``s2robot.evaluation``, ``s2robot.deploy`` (robot interface, safety, control
loop) + ``s2robot.ros`` (ROS transports).
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_policy(path, device="cpu"):
    """Rebuild a trained policy from a checkpoint directory (``model.safetensors`` + ``config.yaml``)."""
    from s2robot.policies.loading import load_policy as _load  # on call: `import s2robot` stays free of torch

    return _load(path, device=device)


__all__ = ["load_policy", "__version__"]
