"""What a policy action means on the robot and the limits every command obeys (``robot.action`` / ``robot.safety``).

Transport-independent: the safety layer and the control loop use these; the ROS robot description
(:class:`s2robot.ros.robot_config.RobotConfig`) holds one of each. Values are checked on construction; a bad one
raises :class:`~s2robot.deploy.config_types.ConfigError` naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from s2robot.deploy.config_types import bad

__all__ = ["ActionConfig", "SafetyConfig"]


@dataclass
class ActionConfig:
    """Layout of the policy action (A,).

    ``space``: ``ee`` (Cartesian end-effector position; safety clamps to the workspace box), ``joint`` (joint
    positions; safety clamps to joint limits) or ``raw`` (sent as is, only finite/delta checks). ``mode``
    ``delta``: ``action[position_indices]`` moves the position set-point (integrated like the env does, starting
    from the measured ``proprio[state_indices]``); ``absolute``: it is the target itself. ``gripper_index``: the
    action entry commanding the gripper (None: no gripper).
    """

    dim: int
    space: str = "ee"
    mode: str = "delta"
    position_indices: list[int] = field(default_factory=list)
    state_indices: list[int] = field(default_factory=list)
    gripper_index: int | None = None

    def __post_init__(self):
        if self.dim < 1:
            raise bad("robot.action.dim", self.dim, "an integer >= 1")
        if self.space not in ("ee", "joint", "raw"):
            raise bad("robot.action.space", self.space, "ee, joint or raw")
        if self.mode not in ("delta", "absolute"):
            raise bad("robot.action.mode", self.mode, "delta or absolute")
        if len(self.position_indices) != len(self.state_indices):
            raise bad("robot.action.state_indices", self.state_indices,
                      f"as many entries as action.position_indices {self.position_indices}")
        used = list(self.position_indices) + ([self.gripper_index] if self.gripper_index is not None else [])
        if any(not 0 <= i < self.dim for i in used) or len(set(used)) != len(used):
            raise bad("robot.action.position_indices/gripper_index", used,
                      f"distinct action indices in [0, {self.dim}) (action indices {used})")
        if self.space == "ee" and len(self.position_indices) != 3:
            raise bad("robot.action.position_indices", self.position_indices, "3 indices (x, y, z) for space=ee")


@dataclass
class SafetyConfig:
    """Limits applied to every command, independent of the policy (see ``safety.py``).

    ``low``/``high``: absolute target limits for the position dims (the workspace box for ``space: ee``, joint
    limits for ``space: joint``). ``gripper_low/high``: gripper command range. ``max_delta``: largest allowed
    |target - measured| per tick (scalar or per position dim). ``max_velocity``: largest |target - last target| /
    dt in units/s. ``stale_periods``: observations older than this many control periods make the loop hold.
    """

    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    gripper_low: float = -1.0
    gripper_high: float = 1.0
    max_delta: float | list[float] = 0.05
    max_velocity: float | list[float] = 0.5
    stale_periods: float = 3.0
    max_consecutive_rejects: int = 5

    def __post_init__(self):
        if len(self.low) != len(self.high):
            raise bad("robot.safety.high", self.high, f"as many values as safety.low {self.low}")
        if not all(math.isfinite(v) for v in list(self.low) + list(self.high)):
            raise bad("robot.safety.low/high", [self.low, self.high], "finite numbers")
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise bad("robot.safety.low", self.low, f"values <= safety.high {self.high} (safety.low must be <= high)")
        if not self.gripper_low <= self.gripper_high:
            raise bad("robot.safety.gripper_low", self.gripper_low, f"<= safety.gripper_high {self.gripper_high}")
        for name in ("max_delta", "max_velocity"):
            value = getattr(self, name)
            vals = list(value) if isinstance(value, (list, tuple)) else [value]
            if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
                raise bad(f"robot.safety.{name}", value, "finite numbers > 0")
        if not self.stale_periods > 0:
            raise bad("robot.safety.stale_periods", self.stale_periods, "a number > 0")
        if self.max_consecutive_rejects < 0:
            raise bad("robot.safety.max_consecutive_rejects", self.max_consecutive_rejects, "an integer >= 0")
