"""``RospyRobot``: the Robot interface as a ROS 1 node (rospy) talking to the ROS master directly, no rosbridge.

Optional backend (``robot.backend: rospy``, ``ros_version: 1``). It needs ROS 1's Python packages, e.g. on Debian 12
``apt-get install ros-core python3-rospy python3-sensor-msgs python3-geometry-msgs python3-std-msgs
python3-trajectory-msgs`` (or a sourced ROS Noetic). Debian installs them for ``/usr/bin/python3`` under
``/usr/lib/python3/dist-packages``; when rospy is not importable otherwise, that folder is appended to the *end* of
``sys.path`` (so a virtual environment's own numpy etc. still win) at import time of rospy, never earlier.

Only the transport differs from ``RosbridgeRobot``, whose observation decoding, delta set-points, command building,
dry-run shadow topics and e-stop handling are inherited unchanged: every incoming rospy message is turned into the
same dict a rosbridge client receives (``msg_to_dict``: nested dicts, ROS 1 times as ``{"secs", "nsecs"}``,
``uint8[]`` as ``bytes``, which ``messages`` reads like rosbridge's base64 strings) and every outgoing dict back into
a rospy message (``dict_to_msg``).

Link semantics, mapped onto rospy:

* **link up** = this process's node is not shut down *and* the ROS master answers; a watcher thread polls the master
  every ``reconnect_delay_s``. A master that stops answering ends the link epoch (cached observations and the
  delta set-point dropped, commanding stops, ``get_observation`` raises ``RobotDisconnected``) even though rospy's
  peer-to-peer connections may still carry messages; when it answers again a new epoch starts. (rospy does not
  re-register with a *restarted* master: publishers that appear after a roscore restart are not found.)
* **never queued**: publishers have ``queue_size=1`` and nothing is published while the link is down. A command with
  no connected subscriber is reported as not sent (rospy would drop it silently); dry-run shadow topics are exempt.
* vanished robot-side publishers are not a link event: their observations go stale and the watchdog holds.
* ``rospy.init_node`` runs once per process (anonymous ``s2robot_<pid>_<ms>``, ``disable_signals=True``); later
  robots reuse that node and must use the same master.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from typing import Any

from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig
from s2robot.ros.rosbridge import RosbridgeRobot

LOG = logging.getLogger(__name__)

ROS1_APT_PACKAGES = ("ros-core", "python3-rospy", "python3-sensor-msgs", "python3-geometry-msgs", "python3-std-msgs",
                     "python3-trajectory-msgs")
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
DEFAULT_MASTER_URI = "http://localhost:11311"

_node_lock = threading.Lock()


def import_rospy():
    """Import rospy (plus genpy), falling back to Debian's dist-packages appended at the end of ``sys.path``."""
    try:
        import rospy
    except ImportError:
        if os.path.isdir(DEBIAN_DIST_PACKAGES) and DEBIAN_DIST_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_DIST_PACKAGES)
        try:
            import rospy
        except ImportError as e:
            raise ImportError(
                f"robot.backend=rospy needs ROS 1's rospy, not importable here ({e}). On Debian 12: sudo apt-get "
                f"install {' '.join(ROS1_APT_PACKAGES)}; or source a ROS Noetic setup.bash; or use backend=rosbridge"
            ) from e
    return rospy


# ---------------------------------------------------------------------------------------------- message <-> dict
def message_class(msg_type: str):
    """The rospy message class of ``pkg/Name`` (ROS 2 spelling accepted); a clear error when its package is missing."""
    import_rospy()
    import genpy.message

    short = M.normalize_type(msg_type)
    cls = genpy.message.get_message_class(short)
    if cls is None:
        pkg = short.split("/")[0]
        raise ImportError(f"ROS 1 message type {short} not found: install its Python package "
                          f"(Debian: python3-{pkg.replace('_', '-')}; ROS Noetic: ros-noetic-{pkg.replace('_', '-')})")
    return cls


def msg_to_dict(msg: Any) -> Any:
    """A rospy message -> the dict rosbridge would deliver for it (``uint8[]`` kept as ``bytes``)."""
    import genpy

    if isinstance(msg, genpy.Message):
        return {slot: msg_to_dict(getattr(msg, slot)) for slot in msg.__slots__}
    if isinstance(msg, genpy.TVal):  # Time, Duration
        return {"secs": int(msg.secs), "nsecs": int(msg.nsecs)}
    if isinstance(msg, (bytes, bytearray)):
        return bytes(msg)
    if isinstance(msg, (list, tuple)):
        return [msg_to_dict(v) for v in msg]
    return msg


def _field_from_dict(value: Any, slot_type: str) -> Any:
    import genpy

    base, is_array = slot_type.split("[")[0], "[" in slot_type
    if is_array and base in ("uint8", "char"):  # bytes: base64 str (rosbridge JSON), bytes, or a list of ints
        if isinstance(value, str):
            return base64.b64decode(value)
        return bytes(value) if isinstance(value, (bytes, bytearray)) else bytes(bytearray(int(v) for v in value))
    if is_array:
        return [_field_from_dict(v, base) for v in value]
    if base in ("time", "duration"):
        if "secs" in value:
            secs, nsecs = int(value["secs"]), int(value["nsecs"])
        else:  # a ROS 2 spelling
            secs, nsecs = int(value["sec"]), int(value["nanosec"])
        return (genpy.Time if base == "time" else genpy.Duration)(secs, nsecs)
    if "/" in base or base == "Header":
        return dict_to_msg("std_msgs/Header" if base == "Header" else base, value)
    return value


def dict_to_msg(msg_type: str | type, d: Mapping[str, Any]) -> Any:
    """A rosbridge-style dict -> rospy message of ``msg_type``; missing fields keep defaults, unknown ones raise."""
    cls = message_class(msg_type) if isinstance(msg_type, str) else msg_type
    unknown = sorted(set(d) - set(cls.__slots__))
    if unknown:
        raise ValueError(f"{cls._type} has no fields {unknown}; fields: {list(cls.__slots__)}")
    msg = cls()
    for slot, slot_type in zip(cls.__slots__, cls._slot_types):
        if slot in d:
            setattr(msg, slot, _field_from_dict(d[slot], slot_type))
    return msg


# ------------------------------------------------------------------------------------------------------- master
class _TimeoutTransport(xmlrpc.client.Transport):
    """XML-RPC over HTTP with a socket timeout (the stdlib default waits forever on an unreachable host)."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = self._timeout
        return conn


def master_online(uri: str, timeout: float = 1.0) -> bool:
    """True when the ROS master at ``uri`` answers ``getPid`` within ``timeout`` s."""
    try:
        code, _, _ = xmlrpc.client.ServerProxy(uri, transport=_TimeoutTransport(timeout)).getPid("/s2robot_probe")
        return code == 1
    except (OSError, xmlrpc.client.Error, ValueError):
        return False


def ensure_node(master_uri: str, name: str = "s2robot"):
    """``rospy.init_node`` once per process (anonymous, no signal handlers) on ``master_uri``; returns rospy.

    rospy's logging set-up replaces the root logger's handlers; they are restored so this process's own logging
    (console, pytest capture) keeps working. A second call with another master is an error (rospy cannot switch).
    """
    rospy = import_rospy()
    import rosgraph

    with _node_lock:
        if rospy.core.is_initialized():
            current = rosgraph.get_master_uri()
            if current.rstrip("/") != master_uri.rstrip("/"):
                raise RuntimeError(f"this process's ROS 1 node already uses the master {current}; rospy allows one "
                                   f"node per process, so {master_uri} needs another process")
            if rospy.is_shutdown():
                raise RuntimeError("this process's rospy node was shut down; rospy cannot start another one")
            return rospy
        os.environ["ROS_MASTER_URI"] = master_uri
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            rospy.init_node(name, argv=[], anonymous=True, disable_signals=True)
        finally:
            for h in list(root.handlers):
                root.removeHandler(h)
            for h in handlers:
                root.addHandler(h)
            root.setLevel(level)
    return rospy


# -------------------------------------------------------------------------------------------------------- robot
class RospyRobot(RosbridgeRobot):
    """Robot as a ROS 1 node (see the module docstring). ``dry_run=True`` publishes to ``shadow_prefix + topic``."""

    def __init__(self, cfg: RobotConfig, dry_run: bool = False, image_size: tuple[int, int] | None = None,
                 publish: bool = True):
        if cfg.ros_version != 1:
            raise ValueError("RospyRobot is ROS 1: robot.ros_version must be 1")
        super().__init__(cfg, dry_run=dry_run, image_size=image_size, publish=publish)
        self.master_uri = cfg.master_uri or os.environ.get("ROS_MASTER_URI") or DEFAULT_MASTER_URI
        self._rospy = None
        self._subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._classes: dict[str, type] = {}
        self._watch: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self.dropped_no_subscriber = 0

    @property
    def url(self) -> str:
        return self.master_uri

    # ------------------------------------------------------------------------------------------------- link
    def connect(self) -> None:
        cfg = self.cfg
        import_rospy()
        # Resolve every message class first: a missing message package fails before anything is registered.
        types = [c.type for c in cfg.cameras.values()] + [t for _, t in self._outputs().values()]
        types += [M.JOINT_STATE_TYPE] if "joint_state" in self.required_keys() else []
        types += [M.POSE_STAMPED_TYPE] if "ee_pose" in self.required_keys() else []
        types += ([M.BOOL_TYPE] if cfg.estop_topic else []) + ([M.EMPTY_TYPE] if cfg.estop_reset_topic else [])
        for t in types:
            message_class(t)
        deadline = time.monotonic() + cfg.connect_timeout_s
        while not master_online(self.master_uri, timeout=min(1.0, cfg.connect_timeout_s)):
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"cannot reach the ROS master at {self.master_uri} within {cfg.connect_timeout_s} s: is roscore "
                    f"running there, and are robot.master_uri / ROS_MASTER_URI (and ROS_IP or ROS_HOSTNAME, the "
                    f"address other nodes reach this one at) right?")
            time.sleep(min(0.2, cfg.reconnect_delay_s))
        self._rospy = ensure_node(self.master_uri)
        self._stop_watch.clear()
        with self._lock:
            self._connected = True
        self._subscribe_all()
        if self.publish:
            self._advertise_all()
        self._watch = threading.Thread(target=self._watch_master, name="s2robot-rospy-master", daemon=True)
        self._watch.start()
        LOG.info("ROS 1 node %s on master %s (dry_run=%s)", self._rospy.get_name(), self.master_uri, self.dry_run)

    def _watch_master(self) -> None:
        period = max(0.05, float(self.cfg.reconnect_delay_s))
        while not self._stop_watch.wait(period):
            up = not self._rospy.is_shutdown() and master_online(self.master_uri, timeout=max(period, 0.2))
            if self._stop_watch.is_set() or up == self._connected:
                continue
            if up:
                with self._lock:
                    self._connected = True
                LOG.info("ROS master %s answers again (epoch %d); waiting for fresh observations", self.master_uri,
                         self._epoch)
            else:
                self._link_down()
                LOG.warning("ROS master %s unreachable (or rospy shut down); commanding stopped", self.master_uri)

    @property
    def is_connected(self) -> bool:
        return self._connected and self._rospy is not None and not self._rospy.is_shutdown()

    def close(self) -> None:
        """Unregister this robot's topics; the process's node stays (rospy cannot restart one)."""
        if self._rospy is None:
            return
        self._stop_watch.set()
        if self._watch is not None:
            self._watch.join(timeout=5.0)
            self._watch = None
        self._connected = False
        for handle in self._subs + list(self._pubs.values()):
            try:
                handle.unregister()
            except Exception as e:  # noqa: BLE001 - closing must never raise over the original error
                LOG.warning("unregistering %s: %s", getattr(handle, "name", handle), e)
        self._subs, self._pubs = [], {}
        self._rospy = None

    # -------------------------------------------------------------------------------------------- topics
    def _subscribe(self, key: str, topic: str, msg_type: str, callback: Callable[[dict], None] | None = None) -> None:
        on_dict = callback or (lambda msg, key=key: self._store(key, msg))
        sub = self._rospy.Subscriber(topic, message_class(msg_type), lambda m: on_dict(msg_to_dict(m)),
                                     queue_size=1, buff_size=2**24, tcp_nodelay=True)
        self._subs.append(sub)

    def _advertise_all(self) -> None:
        for key, (name, msg_type) in self._outputs().items():
            self._classes[key] = message_class(msg_type)
            self._pubs[key] = self._rospy.Publisher(name, self._classes[key], queue_size=1, tcp_nodelay=True)
            self._pub_names[key] = (name, msg_type)

    def _publish_now(self, key: str, msg: dict) -> bool:
        """Publish ``msg`` on output ``key`` now, or not at all (link down, or no subscriber to receive it)."""
        M.check_json(msg)  # same contract as the rosbridge backend: plain, finite values only
        pub = self._pubs.get(key)
        if pub is None or not self.is_connected:
            self.dropped_while_down += 1
            return False
        if not self.dry_run and pub.get_num_connections() == 0:
            self.dropped_no_subscriber += 1
            return False
        try:
            pub.publish(dict_to_msg(self._classes[key], msg))
        except self._rospy.ROSException as e:  # node shut down in between
            LOG.warning("publish on %s failed: %s", pub.name, e)
            self.dropped_while_down += 1
            return False
        self.sent += 1
        return True
