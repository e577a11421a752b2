"""``RosbridgeRobot``: the Robot interface over rosbridge (ROS 1 or ROS 2 ``rosbridge_server``) with roslibpy.

Transport: roslibpy 2.1's ``asyncio`` transport by default (``robot.transport: twisted`` selects the other one;
only one of the two can be used per process).

How the roslibpy 2.1 pitfalls are handled:

* numpy values in a message make roslibpy's JSON encoding fail and the message is dropped *silently*: every
  outgoing message is built from plain Python values (``messages.to_plain``) and strictly JSON-checked here first.
* a publish made while disconnected is queued by roslibpy and replayed in a burst after the reconnect: motion
  commands never go through ``Topic.publish``. ``_publish_now`` sends only while the link is up, and the send is
  bound to the link *epoch* it was issued in, so a send that lost the race with a disconnect is discarded instead
  of replayed. On a disconnect all cached observations (and the delta set-point) are dropped; commanding resumes only from observations
  received on the new link (and the watchdog additionally wants them captured after the fault).
* ``Ros.get_time()`` only parses ROS 1 stamps: time is handled here (``messages.stamp_to_sec`` reads both).

Incoming messages are only stored by the roslibpy callbacks (cheap, on the network thread); decoding happens in
``get_observation`` on the control thread, and only for the newest message of each topic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2robot.deploy.robot_interface import ObservationError, Robot, RobotDisconnected
from s2robot.deploy.safety import EStop
from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig

LOG = logging.getLogger(__name__)


class _Latest:
    """Newest message of one topic with its receive times (monotonic and wall) and link epoch."""

    __slots__ = ("msg", "recv_mono", "recv_wall", "epoch", "seq")

    def __init__(self, msg, recv_mono, recv_wall, epoch, seq):
        self.msg, self.recv_mono, self.recv_wall, self.epoch, self.seq = msg, recv_mono, recv_wall, epoch, seq


@dataclass
class InputStats:
    """What one subscribed topic delivered since connect: message count, first/last receive time (monotonic),
    recent ``receive wall time - header stamp`` values (s), and the newest message."""

    topic: str
    count: int = 0
    first: float | None = None
    last: float | None = None
    stamp_lags: deque = field(default_factory=lambda: deque(maxlen=50))
    msg: dict | None = None

    @property
    def rate_hz(self) -> float | None:
        if self.count < 2 or self.last is None or self.first is None or self.last <= self.first:
            return None
        return (self.count - 1) / (self.last - self.first)


def _abandon(ros) -> None:
    """Retire a ``roslibpy.Ros`` whose connect failed: no more reconnect attempts, and a handshake that still
    completes after the timeout is closed at once instead of leaving an unowned link open."""
    factory = ros.factory
    factory.maxRetries = 0  # this instance only
    if hasattr(factory, "stopTrying"):  # twisted ReconnectingClientFactory
        factory.stopTrying()
    else:  # roslibpy 2.1 asyncio factory: its reconnect logic stands down on this flag
        factory._stop = True
    factory.on_ready(lambda proto: proto.send_close())


class RosbridgeRobot(Robot):
    """Robot on a rosbridge websocket. ``dry_run=True`` publishes every command to ``shadow_prefix + topic``;
    ``publish=False`` (the pre-flight check) advertises nothing and refuses every command."""

    def __init__(self, cfg: RobotConfig, dry_run: bool = False, image_size: tuple[int, int] | None = None,
                 publish: bool = True):
        self.cfg = cfg
        self.dry_run = bool(dry_run)
        self.publish = bool(publish)
        self.inputs: dict[str, InputStats] = {key: InputStats(topic) for key, topic in self._input_keys().items()}
        self.image_size = tuple(image_size) if image_size is not None else (
            tuple(cfg.image_size) if cfg.image_size else None)
        self.action_dim = cfg.action.dim
        self.cameras = tuple(cfg.cameras)
        self.estop = EStop()
        self._ros = None
        self._lock = threading.Lock()
        self._latest: dict[str, _Latest] = {}
        self._decoded: dict[str, tuple[int, np.ndarray]] = {}
        self._epoch = 0
        self._connected = False
        self._seq = 0
        self._cmd_seq = 0
        self._offset: float | None = None  # stamp_clock=offset: min(recv_wall - stamp) on this link
        self._last_proprio: np.ndarray | None = None
        self._setpoint: np.ndarray | None = None  # integrated target of delta actions
        self._last_targets: np.ndarray | None = None
        self._topics: list[Any] = []
        self._pub_names: dict[str, tuple[str, str]] = {}
        self.sent = 0
        self.dropped_while_down = 0

    # ------------------------------------------------------------------------------------------------- link
    @property
    def url(self) -> str:
        return f"{'wss' if self.cfg.secure else 'ws'}://{self.cfg.host}:{self.cfg.port}"

    def connect(self) -> None:
        import roslibpy
        from roslibpy.core import RosTimeoutError

        cfg = self.cfg
        self._outputs()  # a dry run that could reach a real topic fails here, before any link is opened
        ros = roslibpy.Ros(cfg.host, int(cfg.port), is_secure=bool(cfg.secure), transport=cfg.transport)
        try:
            ros.run(timeout=cfg.connect_timeout_s)
        except BaseException as e:
            _abandon(ros)
            if not isinstance(e, RosTimeoutError):
                raise
            raise ConnectionError(
                f"cannot reach rosbridge at {self.url} within {cfg.connect_timeout_s} s: is rosbridge_server "
                f"running there (ROS 1: roslaunch rosbridge_server rosbridge_websocket.launch; ROS 2: ros2 launch "
                f"rosbridge_server rosbridge_websocket_launch.xml) and is the port reachable?"
            ) from None
        # Per-instance reconnect cadence (class attributes stay untouched).
        ros.factory.initialDelay = cfg.reconnect_delay_s
        ros.factory.maxDelay = max(2.0, cfg.reconnect_delay_s)
        self._ros = ros
        ros.on("close", self._on_close)
        ros.on("ready", self._on_ready)
        self._connected = True
        self._subscribe_all()
        if self.publish:
            self._advertise_all()
        LOG.info("connected to rosbridge at %s (ROS %d, %s transport, dry_run=%s)", self.url, cfg.ros_version,
                 cfg.transport, self.dry_run)

    def _on_close(self, *_):
        self._link_down()
        LOG.warning("rosbridge link lost; commanding stopped until fresh observations arrive")

    def _link_down(self) -> None:
        """The link dropped: start a new epoch and forget everything received or integrated on the old one."""
        with self._lock:
            self._connected = False
            self._epoch += 1
            self._latest.clear()
            self._decoded.clear()
            self._offset = None
            self._setpoint = None
            self._last_proprio = None  # a delta action must not integrate on a state measured on the old link

    def _on_ready(self, *_):
        with self._lock:
            self._connected = True
        LOG.info("rosbridge link back (epoch %d); waiting for fresh observations", self._epoch)

    @property
    def is_connected(self) -> bool:
        return self._connected and self._ros is not None and self._ros.is_connected

    @property
    def link_epoch(self) -> int:
        return self._epoch

    def estop_latched(self) -> bool:
        return self.estop.latched

    def reset_estop(self) -> None:
        self.estop.reset()

    def close(self) -> None:
        ros, self._ros = self._ros, None
        if ros is None:
            return
        self._connected = False
        ros.off("close", self._on_close)
        ros.off("ready", self._on_ready)
        try:
            for t in self._topics:
                if t.is_subscribed:
                    t.unsubscribe()
                if t.is_advertised:
                    t.unadvertise()
            ros.close(timeout=2.0)
        except Exception as e:  # noqa: BLE001 - closing must never raise over the original error
            LOG.warning("closing rosbridge link: %s", e)

    # -------------------------------------------------------------------------------------------- topics
    def _type(self, t: str) -> str:
        return M.ros_type_name(t, self.cfg.ros_version)

    def _subscribe(self, key: str, topic: str, msg_type: str, callback=None) -> None:
        import roslibpy

        t = roslibpy.Topic(self._ros, topic, self._type(msg_type), queue_length=1)
        t.subscribe(callback or (lambda msg, key=key: self._store(key, msg)))
        self._topics.append(t)

    def _store(self, key: str, msg: dict) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        with self._lock:
            self._seq += 1
            self._latest[key] = _Latest(msg, now_mono, now_wall, self._epoch, self._seq)
            st = self.inputs.get(key)
            if st is not None:
                st.count += 1
                st.first = now_mono if st.first is None else st.first
                st.last, st.msg = now_mono, msg
                try:
                    stamp = M.header_stamp(msg)
                except (ValueError, TypeError, KeyError):
                    stamp = None
                if stamp is not None:
                    st.stamp_lags.append(now_wall - stamp)

    def _input_keys(self) -> dict[str, str]:
        """Observation input key (as in ``_latest``) -> topic."""
        cfg = self.cfg
        keys = {f"cam:{c}": cam.topic for c, cam in cfg.cameras.items()}
        if any(s.source == "joint_state" for s in cfg.proprio):
            keys["joint_state"] = cfg.joint_state_topic
        if any(s.source == "ee_pose" for s in cfg.proprio):
            keys["ee_pose"] = cfg.ee_pose_topic
        return keys

    @staticmethod
    def config_key(input_key: str) -> str:
        """``"cam:front"`` -> ``"robot.cameras.front.topic"``, ``"joint_state"`` -> ``"robot.joint_state_topic"``."""
        if input_key.startswith("cam:"):
            return f"robot.cameras.{input_key[4:]}.topic"
        return f"robot.{input_key}_topic"

    def input_stats(self) -> dict[str, InputStats]:
        """A consistent copy of what every input topic delivered so far (for the pre-flight check)."""
        with self._lock:
            return {k: dataclasses.replace(st, stamp_lags=deque(st.stamp_lags, maxlen=st.stamp_lags.maxlen))
                    for k, st in self.inputs.items()}

    def missing_inputs(self) -> dict[str, str]:
        with self._lock:
            epoch = self._epoch
            return {self.config_key(k): topic for k, topic in self._input_keys().items()
                    if k not in self._latest or self._latest[k].epoch != epoch}

    def _subscribe_all(self) -> None:
        cfg = self.cfg
        for cam, c in cfg.cameras.items():
            self._subscribe(f"cam:{cam}", c.topic, c.type)
        if any(s.source == "joint_state" for s in cfg.proprio):
            self._subscribe("joint_state", cfg.joint_state_topic, M.JOINT_STATE_TYPE)
        if any(s.source == "ee_pose" for s in cfg.proprio):
            self._subscribe("ee_pose", cfg.ee_pose_topic, M.POSE_STAMPED_TYPE)
        if cfg.estop_topic:
            self._subscribe("estop", cfg.estop_topic, M.BOOL_TYPE, self._on_estop)
        if cfg.estop_reset_topic:
            self._subscribe("estop_reset", cfg.estop_reset_topic, M.EMPTY_TYPE, lambda _m: self._on_estop_reset())

    def _on_estop(self, msg: dict) -> None:
        if bool(msg.get("data", True)):
            self.estop.trigger(f"e-stop topic {self.cfg.estop_topic}")
            LOG.error("E-STOP received on %s: commanding stopped (latched until reset)", self.cfg.estop_topic)

    def _on_estop_reset(self) -> None:
        if self.estop.latched:
            LOG.warning("e-stop reset received on %s", self.cfg.estop_reset_topic)
        self.estop.reset()

    def _outputs(self) -> dict[str, tuple[str, str]]:
        """Output key -> (topic as published, i.e. shadowed in dry run; message type).

        In a dry run every published topic is checked against every configured topic here too (the config already
        refuses such a ``shadow_prefix``): a dry run that could reach a real topic raises instead."""
        cfg = self.cfg
        outs = {"command": (cfg.command.topic, cfg.command.type)}
        if cfg.gripper is not None:
            outs["gripper"] = (cfg.gripper.topic, cfg.gripper.type)
        if not self.dry_run:
            return outs
        shadowed = {key: (cfg.shadow_topic(topic), msg_type) for key, (topic, msg_type) in outs.items()}
        real = set(cfg.input_topics().values()) | set(cfg.output_topics().values())
        clash = sorted(topic for topic, _ in shadowed.values() if topic in real)
        if clash:
            raise ValueError(f"dry run would publish on real topics {clash} (robot.shadow_prefix="
                             f"{cfg.shadow_prefix!r}); refusing")
        return shadowed

    def _advertise_all(self) -> None:
        import roslibpy

        for key, (name, msg_type) in self._outputs().items():
            t = roslibpy.Topic(self._ros, name, self._type(msg_type), queue_size=1)
            t.advertise()
            self._topics.append(t)
            self._pub_names[key] = (name, msg_type)

    def _publish_now(self, key: str, msg: dict) -> bool:
        """Send ``msg`` on output ``key`` now, or not at all. Never queued across a reconnect."""
        import roslibpy

        M.check_json(msg)  # raises instead of roslibpy's silent drop
        ros = self._ros
        epoch = self._epoch
        if ros is None or not self.is_connected:
            self.dropped_while_down += 1
            return False
        topic, _ = self._pub_names[key]
        self._cmd_seq += 1
        frame = roslibpy.Message(
            {"op": "publish", "id": f"publish:{topic}:{self._cmd_seq}", "topic": topic, "msg": msg, "latch": False}
        )

        def _send(proto):
            # Runs at once when the link is up; if the link dropped in between, roslibpy defers it to the next
            # "ready": then the epoch has changed and the stale command is discarded.
            if self._epoch == epoch and self._connected:
                proto.send_ros_message(frame)
            else:
                self.dropped_while_down += 1
            return proto

        ros.factory.on_ready(_send)
        self.sent += 1
        return True

    # ---------------------------------------------------------------------------------------- observation
    def _capture_time(self, item: _Latest) -> float:
        """Capture time of a message on the monotonic clock, from its header stamp per ``stamp_clock``."""
        stamp = M.header_stamp(item.msg)
        mode = self.cfg.stamp_clock
        if stamp is None or mode == "receive":
            return item.recv_mono
        lag = item.recv_wall - stamp
        if mode == "offset":
            with self._lock:
                self._offset = lag if self._offset is None else min(self._offset, lag)
                lag -= self._offset
        return item.recv_mono - max(lag, 0.0)

    def _image(self, cam: str, item: _Latest) -> np.ndarray:
        cached = self._decoded.get(cam)
        if cached is not None and cached[0] == item.seq:
            return cached[1]
        img = M.resize_image(M.decode_camera(item.msg, self.cfg.cameras[cam].type), self.image_size)
        self._decoded[cam] = (item.seq, img)
        return img

    @contextlib.contextmanager
    def _naming_errors(self, key: str):
        """Turn a decoding error of input ``key``'s message into an ``ObservationError`` naming its topic."""
        try:
            yield
        except (KeyError, ValueError, TypeError, IndexError) as e:
            what = e.args[0] if e.args else repr(e)
            raise ObservationError(f"{self._input_keys()[key]} ({self.config_key(key)}): {what}") from None

    def _proprio(self, latest: dict[str, _Latest]) -> np.ndarray:
        parts = []
        for seg in self.cfg.proprio:
            if seg.source == "ee_pose":
                with self._naming_errors("ee_pose"):
                    v = M.pose_position(latest["ee_pose"].msg)[: seg.size]
            else:
                with self._naming_errors("joint_state"):
                    v = M.joint_state_values(latest["joint_state"].msg, seg.names, seg.field)
                if seg.reduce == "sum":
                    v = v.sum(keepdims=True)
                elif seg.reduce == "mean":
                    v = v.mean(keepdims=True)
            parts.append(np.asarray(v, dtype=np.float32) * np.float32(seg.scale))
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def required_keys(self) -> list[str]:
        return list(self._input_keys())

    def get_observation(self) -> tuple[dict[str, np.ndarray], float] | None:
        if not self.is_connected:
            raise RobotDisconnected(f"rosbridge link to {self.url} is down")
        with self._lock:
            epoch = self._epoch
            latest = {k: self._latest.get(k) for k in self.required_keys()}
        if any(v is None or v.epoch != epoch for v in latest.values()):
            return None
        obs: dict[str, np.ndarray] = {}
        for cam in self.cfg.cameras:
            with self._naming_errors(f"cam:{cam}"):
                obs[f"{cam}_image"] = self._image(cam, latest[f"cam:{cam}"])
        obs["proprio"] = self._proprio(latest)
        ts = min(self._capture_time(v) for v in latest.values())
        self._last_proprio = obs["proprio"]
        return obs, ts

    # ---------------------------------------------------------------------------------------------- action
    def command_messages(self, action: np.ndarray, proprio: np.ndarray | None) -> dict[str, dict]:
        """Action (A,) -> {"command": msg, "gripper": msg}; delta position dims become absolute targets."""
        cfg, acfg = self.cfg, self.cfg.action
        a = np.asarray(action, dtype=np.float64)
        pos = list(acfg.position_indices)
        if pos and acfg.mode == "delta":
            base = self._setpoint
            if base is None:
                if proprio is None:
                    raise RobotDisconnected("no measured state yet to turn a delta action into a target")
                base = np.asarray(proprio, dtype=np.float64)[acfg.state_indices]
            targets = a[pos] + base
        else:
            targets = a[pos]
        targets = self._within_limits(np.asarray(targets, dtype=np.float64))
        self._last_targets = targets
        t_now = time.time()
        self._cmd_seq += 1
        header = M.make_header(t_now, cfg.command.frame_id, cfg.ros_version, self._cmd_seq)
        ctype = M.normalize_type(cfg.command.type)
        if ctype == M.POSE_STAMPED_TYPE:
            cmd = M.pose_stamped_msg(targets, cfg.command.orientation, header)
        elif ctype == M.JOINT_TRAJECTORY_TYPE:
            tfs = cfg.command.time_from_start_s or cfg.period
            cmd = M.joint_trajectory_msg(cfg.command.joint_names, targets, tfs, header, cfg.ros_version)
        else:
            full = a.copy()
            full[pos] = targets
            if acfg.gripper_index is not None:
                full[acfg.gripper_index] = self._gripper_within_limits(full[acfg.gripper_index])
            cmd = M.float64_multiarray_msg(full[cfg.command_indices()])  # the gripper entry only if no own topic
        out = {"command": cmd}
        if cfg.gripper is not None and acfg.gripper_index is not None:
            grip = self._gripper_within_limits(a[acfg.gripper_index])
            out["gripper"] = M.gripper_msg(grip, cfg.gripper.type, cfg.gripper.max_effort)
        return out

    def _within_limits(self, targets: np.ndarray) -> np.ndarray:
        """float64 targets clamped to ``safety.low/high`` once more, in the dtype that goes on the wire (JSON
        doubles): re-integrating a delta on the set-point can land an ulp outside a limit the filter clamped to."""
        s, space = self.cfg.safety, self.cfg.action.space
        if s.low and space in ("ee", "joint") and len(s.low) == targets.size:
            return np.clip(targets, np.asarray(s.low, np.float64), np.asarray(s.high, np.float64))
        return targets

    def _gripper_within_limits(self, value: float) -> float:
        s = self.cfg.safety
        return float(min(max(float(value), s.gripper_low), s.gripper_high))

    def send_action(self, action: np.ndarray) -> bool:
        if not self.publish:
            raise RuntimeError("this robot link was opened with publish=False (pre-flight check): nothing is sent")
        if not self.is_connected:
            self.dropped_while_down += 1
            return False
        msgs = self.command_messages(action, self._last_proprio)
        ok = True
        for key in ("gripper", "command"):
            if key in msgs:
                ok = self._publish_now(key, msgs[key]) and ok
        if ok and self.cfg.action.mode == "delta" and self.cfg.action.position_indices:
            self._setpoint = self._last_targets
        return ok

    def reset_setpoint(self) -> None:
        self._setpoint = None
