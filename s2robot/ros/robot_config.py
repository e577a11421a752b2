"""The config dataclasses that describe a robot (``configs/robot/*.yaml`` or a user's own file).

``RobotConfig.from_dict`` checks every value's type against the annotations first (``config_types``), then each
dataclass checks ranges and consistency in ``__post_init__`` (LeRobot style). Every error is a ``ConfigError`` with
one line naming the key, the value and what is expected, raised before anything connects, never mid-deployment.

Topic rules: every topic is an absolute ROS name; outputs (command, gripper) differ from each other and from every
input; in a dry run each output goes to ``shadow_prefix + topic``, and the prefix must make every shadow topic
differ from every configured topic (``""`` or ``"/"`` would publish on the real ones).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2robot.deploy.action_config import ActionConfig, SafetyConfig
from s2robot.deploy.config_types import ConfigError, bad, typed_kwargs
from s2robot.ros import messages as M

_TOPIC_RE = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")
_TOPIC_EXPECTED = "an absolute ROS topic name such as /camera/image_raw (starts with '/', letters, digits, '_')"


def check_topic(key: str, topic: str | None, optional: bool = False) -> None:
    """Raise unless ``topic`` is an absolute ROS name (or None when ``optional``)."""
    if topic is None and optional:
        return
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise bad(key, topic, _TOPIC_EXPECTED)


def _per_dim_values(key: str, value: float | list[float], n: int) -> list[float]:
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(vals) not in (1, n):
        raise bad(key, value, f"one number or {n} (one per action.position_indices entry), got {len(vals)}")
    if any(not math.isfinite(v) or v <= 0 for v in vals):
        raise bad(key, value, "finite numbers > 0")
    return vals


@dataclass
class CameraConfig:
    """One camera: topic and ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``."""

    topic: str
    type: str = M.IMAGE_TYPE  # checked by RobotConfig, which knows the camera's name


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
            raise bad("robot.proprio[].source", self.source, "joint_state or ee_pose")
        if self.source == "joint_state" and not self.names:
            raise bad("robot.proprio[].names", self.names, "the joint names of a joint_state proprio segment")
        if len(set(self.names)) != len(self.names):
            raise bad("robot.proprio[].names", self.names, "distinct joint names")
        if self.field not in ("position", "velocity", "effort"):
            raise bad("robot.proprio[].field", self.field, "position, velocity or effort")
        if self.reduce not in ("none", "sum", "mean"):
            raise bad("robot.proprio[].reduce", self.reduce, "none, sum or mean")
        if self.source == "ee_pose" and self.size not in (3, 7):
            raise bad("robot.proprio[].size", self.size, "3 (xyz) or 7 (xyz + quaternion) for ee_pose")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise bad("robot.proprio[].scale", self.scale, "a finite non-zero number")

    @property
    def dim(self) -> int:
        if self.source == "ee_pose":
            return self.size
        return 1 if self.reduce != "none" else len(self.names)


@dataclass
class CommandConfig:
    """The motion command topic: JointTrajectory, PoseStamped or Float64MultiArray.

    ``joint_names``: the joints of a JointTrajectory; for a Float64MultiArray (e.g. a ros2_control forward command
    controller) the joints its ``data`` must hold, checked against the entries sent at start-up."""

    topic: str
    type: str = M.POSE_STAMPED_TYPE
    frame_id: str = "base_link"
    orientation: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0, 0.0])  # xyzw, for PoseStamped
    joint_names: list[str] = field(default_factory=list)
    time_from_start_s: float | None = None  # JointTrajectory point time; None -> one control period

    def __post_init__(self):
        check_topic("robot.command.topic", self.topic)
        t = M.normalize_type(self.type)
        if t not in M.COMMAND_TYPES:
            raise bad("robot.command.type", self.type, f"one of {M.COMMAND_TYPES} (command type not supported)")
        if t == M.JOINT_TRAJECTORY_TYPE and not self.joint_names:
            raise bad("robot.command.joint_names", self.joint_names, "the joint names a JointTrajectory commands")
        if len(self.orientation) != 4 or not all(math.isfinite(float(v)) for v in self.orientation):
            raise bad("robot.command.orientation", self.orientation, "4 numbers (quaternion x, y, z, w)")
        self.orientation = [float(v) for v in self.orientation]
        if self.time_from_start_s is not None and not self.time_from_start_s > 0:
            raise bad("robot.command.time_from_start_s", self.time_from_start_s, "a number > 0 or null")


@dataclass
class GripperConfig:
    """The gripper's own command topic (``std_msgs/Float64``, ``Float64MultiArray`` or ``GripperCommand``)."""

    topic: str
    type: str = M.FLOAT64_TYPE
    max_effort: float = 0.0

    def __post_init__(self):
        check_topic("robot.gripper.topic", self.topic)
        if M.normalize_type(self.type) not in M.GRIPPER_TYPES:
            raise bad("robot.gripper.type", self.type, f"one of {M.GRIPPER_TYPES}")
        if not math.isfinite(self.max_effort) or self.max_effort < 0:
            raise bad("robot.gripper.max_effort", self.max_effort, "a number >= 0")


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
        self._check_link()
        self._check_topics()
        if self.backend in ("rosbridge", "rospy"):
            self._check_ros_layout()
        self._check_action_sizes()

    # ---------------------------------------------------------------------------------------------- checks
    def _check_link(self) -> None:
        if self.backend not in ("rosbridge", "rospy", "sim"):
            raise bad("robot.backend", self.backend, "rosbridge, rospy or sim")
        if self.ros_version not in (1, 2):
            raise bad("robot.ros_version", self.ros_version, "1 or 2 (ros_version)")
        if self.backend == "rospy" and self.ros_version != 1:
            raise bad("robot.ros_version", self.ros_version, "1 with backend=rospy (ROS 2 robots: use rosbridge)")
        if self.master_uri is not None and not str(self.master_uri).startswith("http://"):
            raise bad("robot.master_uri", self.master_uri, "a URI like http://host:11311 or null")
        if self.transport not in ("asyncio", "twisted"):
            raise bad("robot.transport", self.transport, "asyncio or twisted")
        if not self.host:
            raise bad("robot.host", self.host, "a host name or address")
        if not 0 < self.port < 65536:
            raise bad("robot.port", self.port, "a TCP port in 1..65535")
        if not 0 < self.rate_hz <= 1000:
            raise bad("robot.rate_hz", self.rate_hz, "a number in (0, 1000]")
        for key in ("connect_timeout_s", "reconnect_delay_s"):
            if not 0 < getattr(self, key) < math.inf:
                raise bad(f"robot.{key}", getattr(self, key), "a number > 0")
        if self.stamp_clock not in ("synced", "offset", "receive"):
            raise bad("robot.stamp_clock", self.stamp_clock, "synced, offset or receive")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise bad("robot.image_size", self.image_size, "[height, width] (positive integers) or null")

    def _check_topics(self) -> None:
        for cam, c in self.cameras.items():
            check_topic(f"robot.cameras.{cam}.topic", c.topic)
            if M.normalize_type(c.type) not in M.CAMERA_TYPES:
                raise bad(f"robot.cameras.{cam}.type", c.type, f"one of {M.CAMERA_TYPES}")
        for key in ("joint_state_topic", "ee_pose_topic", "estop_topic", "estop_reset_topic"):
            check_topic(f"robot.{key}", getattr(self, key), optional=True)
        prefix = self.shadow_prefix
        if not isinstance(prefix, str) or not prefix.rstrip("/") or not _TOPIC_RE.match(prefix.rstrip("/")):
            raise bad("robot.shadow_prefix", prefix, "a namespace such as /s2robot/shadow (not empty or '/': a "
                                                      "dry run publishes on shadow_prefix + topic)")
        inputs = self.input_topics()
        outputs = self.output_topics()
        seen: dict[str, str] = {}
        for key, topic in {**inputs, **outputs}.items():
            if topic in seen:
                raise bad(f"robot.{key}", topic, f"a topic different from robot.{seen[topic]}")
            seen[topic] = key
        for key, topic in outputs.items():
            shadow = self.shadow_topic(topic)
            if shadow in seen:
                raise bad("robot.shadow_prefix", prefix, f"a prefix whose dry-run topic for robot.{key} ({shadow}) "
                                                          f"is not the real topic robot.{seen[shadow]}")

    def _check_ros_layout(self) -> None:
        if self.command is None:
            raise bad("robot.command", None, f"a command topic + type (required for the {self.backend} backend)")
        if any(s.source == "ee_pose" for s in self.proprio) and not self.ee_pose_topic:
            raise bad("robot.ee_pose_topic", self.ee_pose_topic, "a topic (a proprio segment reads ee_pose)")
        if any(s.source == "joint_state" for s in self.proprio) and not self.joint_state_topic:
            raise bad("robot.joint_state_topic", self.joint_state_topic, "a topic (a proprio segment reads it)")
        ctype = M.normalize_type(self.command.type)
        if self.action.gripper_index is not None and self.gripper is None and ctype != M.FLOAT64_MULTIARRAY_TYPE:
            raise bad("robot.gripper", None, "a gripper topic + type (action.gripper_index is set)")
        n_pos = len(self.action.position_indices)
        if ctype == M.JOINT_TRAJECTORY_TYPE and self.action.space == "joint" and len(self.command.joint_names) != n_pos:
            raise bad("robot.command.joint_names", self.command.joint_names,
                      f"{n_pos} joint names, one per action.position_indices entry")
        if ctype == M.FLOAT64_MULTIARRAY_TYPE:
            entries = self.command_indices()
            joints = self.command.joint_names
            if joints and len(joints) != len(entries):
                raise bad("robot.command.joint_names", joints,
                          f"{len(entries)} joints: the Float64MultiArray carries action entries {entries}")
            if self.action.space == "joint" and len(entries) != n_pos:
                raise bad("robot.action", f"dim={self.action.dim}, gripper_index={self.action.gripper_index}",
                          f"a joint command of {n_pos} entries (action.position_indices), but the Float64MultiArray "
                          f"would carry action entries {entries}")

    def _check_action_sizes(self) -> None:
        pdim = self.proprio_dim
        if pdim and any(not 0 <= i < pdim for i in self.action.state_indices):
            raise bad("robot.action.state_indices", self.action.state_indices, f"indices in [0, {pdim}) (proprio dim)")
        n = len(self.action.position_indices)
        s = self.safety
        if s.low and self.action.space != "raw" and len(s.low) != n:
            raise bad("robot.safety.low", s.low, f"{n} values (one per action.position_indices entry)")
        if s.low and self.action.space == "raw" and len(s.low) not in (n, self.action.dim):
            raise bad("robot.safety.low", s.low, f"{n} or {self.action.dim} values")
        if n:
            _per_dim_values("robot.safety.max_delta", s.max_delta, n)
            _per_dim_values("robot.safety.max_velocity", s.max_velocity, n)

    # ------------------------------------------------------------------------------------------ derived
    @property
    def proprio_dim(self) -> int:
        return sum(s.dim for s in self.proprio)

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    def input_topics(self) -> dict[str, str]:
        """Config key -> topic of everything subscribed (cameras, states, e-stop)."""
        out = {f"cameras.{cam}.topic": c.topic for cam, c in self.cameras.items()}
        for key in ("joint_state_topic", "ee_pose_topic", "estop_topic", "estop_reset_topic"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def output_topics(self) -> dict[str, str]:
        """Config key -> real topic of everything published (command, gripper)."""
        out = {}
        if self.command is not None:
            out["command.topic"] = self.command.topic
        if self.gripper is not None:
            out["gripper.topic"] = self.gripper.topic
        return out

    def shadow_topic(self, topic: str) -> str:
        """Where a dry run publishes what would go to ``topic``."""
        return self.shadow_prefix.rstrip("/") + topic

    def command_indices(self) -> list[int]:
        """Action entries carried by a Float64MultiArray command: all of them, less the gripper entry when the
        gripper has its own topic."""
        g = self.action.gripper_index if self.gripper is not None else None
        return [i for i in range(self.action.dim) if i != g]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobotConfig:
        """Build from a plain dict / DictConfig (``robot/*.yaml``); every key and value is checked (see module)."""
        from omegaconf import OmegaConf

        if OmegaConf.is_config(d):
            d = OmegaConf.to_container(d, resolve=True)
        if not isinstance(d, Mapping):
            raise ConfigError(f"robot={d!r}: expected a mapping of robot config keys")
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown robot config keys {unknown}; valid keys: {sorted(names)}")
        if "action" not in d:
            raise ConfigError("robot.action: missing; a robot config needs an `action` section (dim, space, mode, "
                              "indices)")
        for key in ("cameras", "proprio", "safety", "sim"):  # null: the default (none / no limits)
            if key in d and d[key] is None:
                d.pop(key, None)
        return cls(**typed_kwargs(cls, d, "robot"))
