"""The robot interface used for deployment, and the config dataclasses that describe a robot.

``Robot`` is the contract of DESIGN.md: ``connect()``, ``get_observation() -> (obs, timestamp)``,
``send_action(action)``, ``close()``. The observation dict is the same one a simulated env or a dataset window
gives (``"<cam>_image"`` uint8 (H, W, 3) RGB, ``"proprio"`` float32 (P,)); ``timestamp`` is the capture time of the
oldest part of the observation on this process's ``time.monotonic()`` clock, so ``time.monotonic() - timestamp``
is its age. Actions are float32 (A,) in the policy's (env) units.

The config dataclasses validate themselves in ``__post_init__`` (LeRobot style) so a bad ``robot/*.yaml`` fails at
start-up with a message naming the key, never mid-deployment.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2robot.ros import messages as M


class RobotDisconnected(RuntimeError):
    """The link to the robot is down; commanding stopped."""


class Robot(abc.ABC):
    """A robot the control loop can drive. Implementations: ``RosbridgeRobot``, ``RospyRobot``, ``SimRobot``."""

    #: action dimension A and the camera names, known after construction
    action_dim: int
    cameras: tuple[str, ...]

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the link; raise with a clear message when the robot cannot be reached."""

    @abc.abstractmethod
    def get_observation(self) -> tuple[dict[str, np.ndarray], float] | None:
        """Newest complete observation and its capture time (``time.monotonic()`` domain), or None if none yet.

        Raises ``RobotDisconnected`` when the link is down.
        """

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> bool:
        """Command one (already safety-filtered) action (A,). Returns False when it was not sent (link down)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop commanding and release the link. Safe to call twice."""

    @property
    def is_connected(self) -> bool:
        return True

    @property
    def link_epoch(self) -> int:
        """Incremented every time the link drops; observations from an older epoch are never used again."""
        return 0

    def reset_setpoint(self) -> None:
        """Forget the set-point that delta actions integrate on (episode start, after a hold); the next delta
        starts from the measured position. No-op for robots that take the action as is."""

    def estop_latched(self) -> bool:
        """True while a software e-stop received from the robot side is latched."""
        return False

    def reset_estop(self) -> None:
        """Clear a latched e-stop (an operator action)."""

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------------- config
def _floats(x, name: str, n: int | None = None) -> tuple[float, ...]:
    if x is None:
        return ()
    vals = tuple(float(v) for v in (x if isinstance(x, (list, tuple)) else [x]))
    if n is not None and len(vals) != n:
        raise ValueError(f"{name} must have {n} values, got {len(vals)}")
    return vals


@dataclass
class CameraConfig:
    """One camera: topic and ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``."""

    topic: str
    type: str = M.IMAGE_TYPE

    def __post_init__(self):
        if not self.topic.startswith("/"):
            raise ValueError(f"camera topic must be absolute (start with '/'), got {self.topic!r}")
        if M.normalize_type(self.type) not in M.CAMERA_TYPES:
            raise ValueError(f"camera type {self.type!r} not supported; use one of {M.CAMERA_TYPES}")


@dataclass
class ProprioSegment:
    """A piece of the proprio vector: ``source`` ``joint_state`` (``names``, ``field``, ``reduce``) or ``ee_pose``
    (``size`` 3 = xyz, 7 = xyz + quaternion xyzw)."""

    source: str
    names: list[str] = field(default_factory=list)
    field: str = "position"
    reduce: str = "none"  # none | sum | mean (e.g. two finger joints -> one gripper width)
    size: int = 3
    scale: float = 1.0

    def __post_init__(self):
        if self.source not in ("joint_state", "ee_pose"):
            raise ValueError(f"proprio source must be joint_state or ee_pose, got {self.source!r}")
        if self.source == "joint_state" and not self.names:
            raise ValueError("a joint_state proprio segment needs joint `names`")
        if self.reduce not in ("none", "sum", "mean"):
            raise ValueError(f"proprio reduce must be none, sum or mean, got {self.reduce!r}")
        if self.source == "ee_pose" and self.size not in (3, 7):
            raise ValueError(f"ee_pose proprio size must be 3 or 7, got {self.size}")

    @property
    def dim(self) -> int:
        if self.source == "ee_pose":
            return self.size
        return 1 if self.reduce != "none" else len(self.names)


@dataclass
class ActionConfig:
    """Layout of the policy action (A,).

    ``space``: ``ee`` (Cartesian end-effector position; safety clamps to the workspace box), ``joint`` (joint
    positions; safety clamps to joint limits) or ``raw`` (sent as is, only finite/delta checks). ``mode``
    ``delta``: ``action[position_indices]`` moves the position set-point (integrated like the env does, starting
    from the measured ``proprio[state_indices]``); ``absolute``: it is the target itself. ``gripper_index``: the action entry commanding the gripper (None: no gripper).
    """

    dim: int
    space: str = "ee"
    mode: str = "delta"
    position_indices: list[int] = field(default_factory=list)
    state_indices: list[int] = field(default_factory=list)
    gripper_index: int | None = None

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"action.dim must be >= 1, got {self.dim}")
        if self.space not in ("ee", "joint", "raw"):
            raise ValueError(f"action.space must be ee, joint or raw, got {self.space!r}")
        if self.mode not in ("delta", "absolute"):
            raise ValueError(f"action.mode must be delta or absolute, got {self.mode!r}")
        if len(self.position_indices) != len(self.state_indices):
            raise ValueError("action.position_indices and action.state_indices must have the same length")
        used = list(self.position_indices) + ([self.gripper_index] if self.gripper_index is not None else [])
        if any(not 0 <= i < self.dim for i in used) or len(set(used)) != len(used):
            raise ValueError(f"action indices {used} must be distinct and in [0, {self.dim})")
        if self.space == "ee" and len(self.position_indices) != 3:
            raise ValueError("action.space=ee needs 3 position_indices (x, y, z)")


@dataclass
class CommandConfig:
    """The motion command topic: JointTrajectory, PoseStamped or Float64MultiArray."""

    topic: str
    type: str = M.POSE_STAMPED_TYPE
    frame_id: str = "base_link"
    orientation: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0, 0.0])  # xyzw, for PoseStamped
    joint_names: list[str] = field(default_factory=list)  # for JointTrajectory
    time_from_start_s: float | None = None  # JointTrajectory point time; None -> one control period

    def __post_init__(self):
        if not self.topic.startswith("/"):
            raise ValueError(f"command topic must be absolute, got {self.topic!r}")
        t = M.normalize_type(self.type)
        if t not in M.COMMAND_TYPES:
            raise ValueError(f"command type {self.type!r} not supported; use one of {M.COMMAND_TYPES}")
        if t == M.JOINT_TRAJECTORY_TYPE and not self.joint_names:
            raise ValueError("a JointTrajectory command needs command.joint_names")
        self.orientation = list(_floats(self.orientation, "command.orientation", 4))


@dataclass
class GripperConfig:
    topic: str
    type: str = M.FLOAT64_TYPE
    max_effort: float = 0.0

    def __post_init__(self):
        if M.normalize_type(self.type) not in M.GRIPPER_TYPES:
            raise ValueError(f"gripper type {self.type!r} not supported; use one of {M.GRIPPER_TYPES}")


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
            raise ValueError("safety.low and safety.high must have the same length")
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"safety.low must be <= safety.high, got {self.low} > {self.high}")
        if self.gripper_low > self.gripper_high:
            raise ValueError("safety.gripper_low must be <= safety.gripper_high")
        for name in ("max_delta", "max_velocity"):
            vals = _floats(getattr(self, name), f"safety.{name}")
            if not vals or any(v <= 0 for v in vals):
                raise ValueError(f"safety.{name} must be > 0, got {getattr(self, name)}")
        if self.stale_periods <= 0:
            raise ValueError("safety.stale_periods must be > 0")


@dataclass
class RobotConfig:
    """A whole ``robot/*.yaml``. ``backend``: ``rosbridge`` (a real robot or the test server), ``rospy`` (a ROS 1
    node talking to the ROS master at ``master_uri`` directly; optional, needs the ROS 1 Python packages) or ``sim``
    (a built-in MuJoCo task behind the Robot interface, no ROS)."""

    action: ActionConfig
    backend: str = "rosbridge"
    name: str = "robot"
    host: str = "127.0.0.1"
    port: int = 9090
    master_uri: str | None = None  # backend=rospy: http://host:11311; null: $ROS_MASTER_URI or http://localhost:11311
    secure: bool = False
    transport: str = "asyncio"
    ros_version: int = 2
    rate_hz: float = 10.0
    connect_timeout_s: float = 10.0
    reconnect_delay_s: float = 0.5
    stamp_clock: str = "synced"  # synced | offset | receive
    image_size: list[int] | None = None
    cameras: dict[str, CameraConfig] = field(default_factory=dict)
    joint_state_topic: str | None = "/joint_states"
    ee_pose_topic: str | None = None
    proprio: list[ProprioSegment] = field(default_factory=list)
    command: CommandConfig | None = None
    gripper: GripperConfig | None = None
    estop_topic: str | None = "/s2robot/estop"
    estop_reset_topic: str | None = "/s2robot/estop_reset"
    shadow_prefix: str = "/s2robot/shadow"
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    sim: dict[str, Any] = field(default_factory=dict)  # backend=sim: task, env_kwargs, image_size, ...

    def __post_init__(self):
        if self.backend not in ("rosbridge", "rospy", "sim"):
            raise ValueError(f"robot.backend must be rosbridge, rospy or sim, got {self.backend!r}")
        if self.backend == "rospy" and self.ros_version != 1:
            raise ValueError("robot.backend=rospy is ROS 1: set robot.ros_version: 1 (ROS 2 robots: use rosbridge)")
        if self.master_uri is not None and not str(self.master_uri).startswith("http://"):
            raise ValueError(f"robot.master_uri must look like http://host:11311, got {self.master_uri!r}")
        if self.transport not in ("asyncio", "twisted"):
            raise ValueError(f"robot.transport must be asyncio or twisted, got {self.transport!r}")
        if self.ros_version not in (1, 2):
            raise ValueError(f"robot.ros_version must be 1 or 2, got {self.ros_version!r}")
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"robot.rate_hz must be in (0, 1000], got {self.rate_hz}")
        if self.stamp_clock not in ("synced", "offset", "receive"):
            raise ValueError(f"robot.stamp_clock must be synced, offset or receive, got {self.stamp_clock!r}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"robot.image_size must be [height, width], got {self.image_size}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"robot.port must be a TCP port, got {self.port}")
        if self.backend in ("rosbridge", "rospy"):
            if self.command is None:
                raise ValueError(f"robot.command (topic + type) is required for the {self.backend} backend")
            if any(s.source == "ee_pose" for s in self.proprio) and not self.ee_pose_topic:
                raise ValueError("a proprio segment reads ee_pose but robot.ee_pose_topic is not set")
            if any(s.source == "joint_state" for s in self.proprio) and not self.joint_state_topic:
                raise ValueError("a proprio segment reads joint_state but robot.joint_state_topic is not set")
            if self.action.gripper_index is not None and self.gripper is None and \
                    M.normalize_type(self.command.type) != M.FLOAT64_MULTIARRAY_TYPE:
                raise ValueError("action.gripper_index is set but robot.gripper (topic + type) is missing")
            if M.normalize_type(self.command.type) == M.JOINT_TRAJECTORY_TYPE and self.action.space == "joint" and \
                    len(self.command.joint_names) != len(self.action.position_indices):
                raise ValueError("command.joint_names must name one joint per action.position_indices entry")
        pdim = self.proprio_dim
        if pdim and any(not 0 <= i < pdim for i in self.action.state_indices):
            raise ValueError(f"action.state_indices {self.action.state_indices} out of range for proprio dim {pdim}")
        n = len(self.action.position_indices)
        if self.safety.low and len(self.safety.low) != n and self.action.space != "raw":
            raise ValueError(f"safety.low/high need {n} values (one per action.position_indices), "
                             f"got {len(self.safety.low)}")

    @property
    def proprio_dim(self) -> int:
        return sum(s.dim for s in self.proprio)

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobotConfig:
        """Build from a plain dict / DictConfig (``robot/*.yaml``); unknown keys are an error naming them."""
        if not isinstance(d, Mapping):
            from omegaconf import OmegaConf

            d = OmegaConf.to_container(d, resolve=True)
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown robot config keys {unknown}; valid keys: {sorted(names)}")
        if "action" not in d:
            raise ValueError("robot config needs an `action` section (dim, space, mode, indices)")

        def build(klass, value, key):
            if value is None or isinstance(value, klass):
                return value
            try:
                return klass(**dict(value))
            except TypeError as e:
                raise ValueError(f"robot.{key}: {e}") from None

        d["action"] = build(ActionConfig, d["action"], "action")
        d["cameras"] = {k: build(CameraConfig, v, f"cameras.{k}") for k, v in dict(d.get("cameras") or {}).items()}
        d["proprio"] = [build(ProprioSegment, v, "proprio") for v in (d.get("proprio") or [])]
        d["command"] = build(CommandConfig, d.get("command"), "command")
        d["gripper"] = build(GripperConfig, d.get("gripper"), "gripper")
        d["safety"] = build(SafetyConfig, d.get("safety") or {}, "safety")
        if d.get("image_size") is not None:
            d["image_size"] = [int(v) for v in d["image_size"]]
        return cls(**d)
