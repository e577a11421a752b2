"""The optional rospy backend (ROS 1) against a real ``roscore``: closed loop, dry run, e-stop, master loss.

Skipped unless ROS 1's Python packages and ``roscore`` are installed (Debian 12: ``apt-get install ros-core
python3-rospy python3-sensor-msgs python3-geometry-msgs python3-std-msgs python3-trajectory-msgs``; CI does this
with ``S2ROBOT_ROS1=1``). A ``roscore -p <free port>`` runs for the module (logs under a temporary ``ROS_HOME``); the
robot is ``FakeReachEnv`` served by its own ROS node in a subprocess (``rospy_test_robot.py``), and this process is
the client node (``RospyRobot`` + control loop + safety), so everything between them crosses the ROS master and
TCPROS. The master-loss test stops and restarts roscore, so it stays last.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbridge_test_server import FAKE_ROBOT_CFG

from s2robot.deploy.control_loop import CallablePolicy, ControlLoop, LoopConfig
from s2robot.deploy.robot_interface import RobotDisconnected
from s2robot.deploy.safety import SafetyFilter, Watchdog
from s2robot.ros.deploy import build_robot
from s2robot.ros.robot_config import RobotConfig

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning")]
RATE = 20.0
CMD = FAKE_ROBOT_CFG["command"]["topic"]
GRIPPER = FAKE_ROBOT_CFG["gripper"]["topic"]
SHADOW = "/s2robot/shadow"
APT = "ros-core python3-rospy python3-sensor-msgs python3-geometry-msgs python3-std-msgs python3-trajectory-msgs"


def _cfg(master_uri: str | None = None, **kw) -> RobotConfig:
    return RobotConfig.from_dict({**FAKE_ROBOT_CFG, "backend": "rospy", "ros_version": 1, "master_uri": master_uri,
                                  "image_size": [12, 12], **kw})


def _wait(pred, timeout: float = 5.0) -> bool:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_rospy_config_validation_and_deploy_builds_it():
    """Runs without ROS: constructing the robot imports nothing from ROS."""
    with pytest.raises(ValueError, match=r"robot.ros_version=2: expected 1 with backend=rospy"):
        RobotConfig.from_dict({**FAKE_ROBOT_CFG, "backend": "rospy"})  # FAKE_ROBOT_CFG is ROS 2
    with pytest.raises(ValueError, match="master_uri"):
        _cfg("localhost:11311")
    with pytest.raises(ValueError, match="rosbridge, rospy or sim"):
        RobotConfig.from_dict({**FAKE_ROBOT_CFG, "backend": "ros1"})
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs/robot/rospy_lift_cube.yaml").read_text())
    assert RobotConfig.from_dict(shipped).backend == "rospy"
    robot = build_robot(_cfg("http://127.0.0.1:11999"), dry_run=True)
    assert type(robot).__name__ == "RospyRobot" and robot.url == "http://127.0.0.1:11999"
    assert not robot.is_connected and robot.link_epoch == 0
    assert robot.send_action(np.zeros(4, np.float32)) is False


# ------------------------------------------------------------------------------------------------------ fixtures
def _require_ros1(roscore: bool = True) -> None:
    try:
        from s2robot.ros.rospy_robot import import_rospy, message_class

        import_rospy()
        for t in ("sensor_msgs/Image", "geometry_msgs/PoseStamped", "std_msgs/Float64",
                  "trajectory_msgs/JointTrajectory"):
            message_class(t)
    except ImportError as e:
        pytest.skip(f"ROS 1 Python packages missing (apt-get install {APT}): {e}")
    if roscore and shutil.which("roscore") is None:
        pytest.skip(f"no roscore executable (apt-get install {APT})")


def test_rospy_messages_round_trip_rosbridge_dicts():
    """dict (rosbridge JSON: base64 bytes, {secs, nsecs}) -> rospy message -> serialized -> dict, decoded the same."""
    _require_ros1(roscore=False)
    from io import BytesIO

    from s2robot.ros import messages as M
    from s2robot.ros.rospy_robot import dict_to_msg, message_class, msg_to_dict

    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    header = M.make_header(1234.5, "cam", 1, 7)
    img = dict_to_msg("sensor_msgs/msg/Image", M.encode_image(rgb, "bgr8", header))
    buf = BytesIO()
    img.serialize(buf)
    back = msg_to_dict(message_class("sensor_msgs/Image")().deserialize(buf.getvalue()))
    assert isinstance(back["data"], bytes) and back["header"]["stamp"] == {"secs": 1234, "nsecs": 500_000_000}
    assert np.array_equal(M.decode_image(back), rgb) and M.header_stamp(back) == 1234.5
    traj = M.joint_trajectory_msg(["a", "b"], [0.1, 0.2], 0.05, header, 1)
    msg = dict_to_msg("trajectory_msgs/JointTrajectory", traj)
    assert msg.points[0].time_from_start.to_sec() == 0.05 and list(msg.points[0].positions) == [0.1, 0.2]
    assert msg_to_dict(msg) == {**traj, "points": [{**traj["points"][0], "positions": [0.1, 0.2]}]}
    with pytest.raises(ValueError, match="no fields"):
        dict_to_msg("std_msgs/Float64", {"data": 1.0, "value": 2.0})
    with pytest.raises(ImportError, match="install its Python package"):
        message_class("no_such_msgs/Thing")


class Roscore:
    """``roscore -p PORT`` in its own process group, loopback, logs in ``home``."""

    def __init__(self, home: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ROS_MASTER_URI": self.uri, "ROS_HOME": str(home), "ROS_IP": "127.0.0.1"}
        self.env.pop("ROS_HOSTNAME", None)
        self.home = home
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from s2robot.ros.rospy_robot import master_online

        log = open(self.home / "roscore.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(["roscore", "-p", str(self.port)], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if not _wait(lambda: master_online(self.uri, 0.5), timeout=30):
            self.stop()
            pytest.fail(f"roscore did not come up on {self.uri}; see {self.home / 'roscore.log'}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGINT)  # roslaunch's group: rosmaster + rosout
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


class FakeRobotNode:
    """``rospy_test_robot.py`` in a subprocess, driven by JSON lines."""

    def __init__(self, core: Roscore, cfg: dict):
        script = Path(__file__).with_name("rospy_test_robot.py")
        self.log = core.home / "fake_robot.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], env=core.env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._lock = threading.Lock()
        self.ready = self._reply(30)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def _reply(self, timeout: float) -> dict:
        try:
            out = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the fake robot node did not answer; see {self.log}") from None
        if out is None:
            raise RuntimeError(f"the fake robot node exited (rc {self.proc.poll()}); see {self.log}")
        return out

    def call(self, op: str, **kw) -> dict:
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
            return self._reply(10)

    def count(self, topic: str) -> int:
        return self.call("messages", topic=topic)["count"]

    def connected(self, topic: str) -> bool:
        return self.call("connections", topic=topic)["count"] >= 1

    def close(self) -> None:
        try:
            self.call("quit")
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    _require_ros1()
    home = tmp_path_factory.mktemp("ros_home")
    core = Roscore(home)
    saved = {k: os.environ.get(k) for k in ("ROS_HOME", "ROS_IP", "ROS_HOSTNAME")}
    os.environ.update(ROS_HOME=str(home), ROS_IP="127.0.0.1")  # this process's node: logs, advertised address
    os.environ.pop("ROS_HOSTNAME", None)
    core.start()
    yield core
    core.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def fake_robot(core):
    node = FakeRobotNode(core, {**FAKE_ROBOT_CFG, "ros_version": 1})
    yield node
    node.close()


@pytest.fixture
def connect(core):
    from s2robot.ros.rospy_robot import RospyRobot

    robots = []

    def make(dry_run: bool = False) -> RospyRobot:
        robots.append(RospyRobot(_cfg(core.uri), dry_run=dry_run))
        robots[-1].connect()
        return robots[-1]

    yield make
    for r in robots:
        r.close()


def _episode(robot, fake_robot, seed: int, max_steps: int, on_tick=None, stop_on_success: bool = False):
    """Reset the fake robot, run one control-loop episode with the (privileged) reach expert, stop the robot."""
    goal = np.asarray(fake_robot.call("reset", seed=seed)["goal"])
    t_reset = time.monotonic()

    def expert(obs):
        return np.array([*np.clip(goal - obs["proprio"][:3], -0.05, 0.05), 0.0], np.float32)

    cfg = robot.cfg
    loop = ControlLoop(robot, CallablePolicy(expert), SafetyFilter(cfg.action, cfg.safety, 1 / RATE),
                       Watchdog(1 / RATE, cfg.safety.stale_periods),
                       LoopConfig(rate_hz=RATE, max_steps=max_steps, stop_on_success=stop_on_success),
                       success_fn=lambda: fake_robot.call("success")["success"])
    fake_robot.call("start")
    try:
        return loop.run_episode(on_tick=on_tick, start_after=t_reset)
    finally:
        fake_robot.call("stop")


# --------------------------------------------------------------------------------------------------------- tests
def test_closed_loop_through_roscore_reaches_goal(fake_robot, connect):
    robot = connect()
    assert _wait(lambda: fake_robot.connected(CMD) and fake_robot.connected(GRIPPER))
    seen = []
    robot_get = robot.get_observation

    def spy():
        got = robot_get()
        if got is not None:
            seen.append(got[0])
        return got

    robot.get_observation = spy
    rep = _episode(robot, fake_robot, seed=0, max_steps=60, stop_on_success=True)
    assert rep.success and rep.status == "success", rep.summary()
    obs = seen[-1]
    assert obs["front_image"].shape == (12, 12, 3) and obs["front_image"].dtype == np.uint8  # rgb8 Image
    assert obs["wrist_image"].shape == (12, 12, 3)  # jpeg CompressedImage
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    # every command reached the robot node as a PoseStamped with a ROS 1 stamp, plus a Float64 gripper command
    assert _wait(lambda: fake_robot.count(CMD) == rep.commands), (fake_robot.count(CMD), rep.commands)
    last = fake_robot.call("messages", topic=CMD)["last"]
    assert set(last["header"]["stamp"]) == {"secs", "nsecs"} and last["header"]["frame_id"] == "base_link"
    assert fake_robot.count(GRIPPER) == rep.commands
    assert rep.latencies and max(rep.latencies) < 0.5
    assert robot.dropped_while_down == 0 and robot.dropped_no_subscriber == 0


def test_dry_run_publishes_only_on_shadow_topics(fake_robot, connect):
    robot = connect(dry_run=True)
    assert _wait(lambda: fake_robot.connected(SHADOW + CMD) and fake_robot.connected(SHADOW + GRIPPER))
    real_before, grip_before = fake_robot.count(CMD), fake_robot.count(GRIPPER)
    shadow_before = fake_robot.count(SHADOW + CMD)
    rep = _episode(robot, fake_robot, seed=1, max_steps=10)
    assert rep.commands > 0
    assert _wait(lambda: fake_robot.count(SHADOW + CMD) - shadow_before == rep.commands)
    time.sleep(0.2)
    assert fake_robot.count(CMD) == real_before and fake_robot.count(GRIPPER) == grip_before


def test_estop_latches_until_reset(fake_robot, connect):
    robot = connect()
    assert _wait(lambda: fake_robot.connected(CMD) and fake_robot.connected("/s2robot/estop")
                 and fake_robot.connected("/s2robot/estop_reset"))
    sent = {}

    def on_tick(k, rep):
        if k == 5:
            fake_robot.call("publish", topic="/s2robot/estop", msg={"data": True})
        if k == 10:
            sent["latched"] = robot.sent
            assert robot.estop_latched()
        if k == 15:
            fake_robot.call("publish", topic="/s2robot/estop", msg={"data": False})  # does not clear the latch
        if k == 25:
            sent["before_reset"] = robot.sent
            assert robot.estop_latched()
            fake_robot.call("publish", topic="/s2robot/estop_reset", msg={})

    rep = _episode(robot, fake_robot, seed=2, max_steps=40, on_tick=on_tick)
    assert rep.holds["estop"] >= 12
    assert sent["before_reset"] == sent["latched"]  # nothing commanded while latched
    assert not robot.estop_latched() and robot.sent >= sent["before_reset"] + 5


def test_master_loss_stops_commanding_new_epoch_and_recovers(core, fake_robot, connect):
    """Last test: it restarts roscore (rospy does not re-register with a new master)."""
    robot = connect()
    assert _wait(lambda: fake_robot.connected(CMD))
    fake_robot.call("reset", seed=3)
    fake_robot.call("start")
    try:
        assert _wait(lambda: robot.get_observation() is not None)
        epoch, cmds = robot.link_epoch, fake_robot.count(CMD)
        core.stop()
        assert _wait(lambda: not robot.is_connected, timeout=5)
        assert robot.link_epoch == epoch + 1
        with pytest.raises(RobotDisconnected, match=core.uri):
            robot.get_observation()
        assert robot.send_action(np.array([0.01, 0, 0, 0], np.float32)) is False
        assert robot.dropped_while_down >= 1
        core.start()  # same port
        assert _wait(lambda: robot.is_connected, timeout=10)
        assert robot.link_epoch == epoch + 1
        # peer-to-peer links survived: fresh observations of the new epoch arrive and commands flow again
        assert _wait(lambda: robot.get_observation() is not None)
        assert robot.send_action(np.array([0.01, 0, 0, 0], np.float32))
        assert _wait(lambda: fake_robot.count(CMD) == cmds + 1)
    finally:
        fake_robot.call("stop")
