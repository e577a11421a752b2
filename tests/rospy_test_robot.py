"""The robot side of ``test_ros_rospy.py``: ``FakeReachEnv`` as its own ROS 1 node (a separate process).

Run as ``python tests/rospy_test_robot.py '<robot config json>'`` with ``ROS_MASTER_URI`` set. The
``SimRobotServer`` of ``rosbridge_test_server.py`` is reused unchanged: ``RospyBus`` gives it the two calls it makes
on a rosbridge test server (``publish(topic, dict)``, ``on_publish(topic, callback)``), carried by rospy
publishers/subscribers instead. The test drives this process over stdin/stdout, one JSON object per line each way:
``reset`` (seed), ``start``, ``stop``, ``success``, ``messages`` (topic: count and newest), ``connections`` (topic:
connected peers), ``publish`` (topic, msg), ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Callable

from rosbridge_test_server import FakeReachEnv, SimRobotServer

from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig
from s2robot.ros.rospy_robot import dict_to_msg, ensure_node, message_class, msg_to_dict


class RospyBus:
    """``RosbridgeTestServer``'s robot-side API over rospy: publish dicts, receive dicts (and keep them)."""

    def __init__(self, rospy, publish: dict[str, str], listen: dict[str, str]):
        self.rospy = rospy
        self.lock = threading.Lock()
        self.received: dict[str, list[dict]] = defaultdict(list)
        self._callbacks: dict[str, list[Callable[[dict], None]]] = defaultdict(list)
        self.pubs = {t: rospy.Publisher(t, message_class(ty), queue_size=1, tcp_nodelay=True)
                     for t, ty in publish.items()}
        self.subs = {t: rospy.Subscriber(t, message_class(ty), self._on_msg, callback_args=t, queue_size=10,
                                         buff_size=2**24, tcp_nodelay=True) for t, ty in listen.items()}

    def _on_msg(self, msg, topic: str) -> None:
        d = msg_to_dict(msg)
        with self.lock:
            self.received[topic].append(d)
        for cb in list(self._callbacks[topic]):
            cb(d)

    def on_publish(self, topic: str, callback: Callable[[dict], None]) -> None:
        self._callbacks[topic].append(callback)

    def publish(self, topic: str, msg: dict) -> None:
        pub = self.pubs[topic]
        pub.publish(dict_to_msg(pub.data_class, msg))

    def connections(self, topic: str) -> int:
        handle = self.pubs.get(topic) or self.subs[topic]
        return handle.get_num_connections()


def main() -> None:
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # replies only: anything printed (rospy logs) goes to stderr
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    cfg = RobotConfig.from_dict(json.loads(sys.argv[1]))
    rospy = ensure_node(os.environ["ROS_MASTER_URI"], name="fake_robot")
    shadow = cfg.shadow_prefix.rstrip("/")
    publish = {c.topic: c.type for c in cfg.cameras.values()}
    publish.update({cfg.joint_state_topic: M.JOINT_STATE_TYPE, cfg.ee_pose_topic: M.POSE_STAMPED_TYPE,
                    cfg.estop_topic: M.BOOL_TYPE, cfg.estop_reset_topic: M.EMPTY_TYPE})
    listen = {}
    for topic, ty in ((cfg.command.topic, cfg.command.type), (cfg.gripper.topic, cfg.gripper.type)):
        listen[topic] = listen[shadow + topic] = ty
    bus = RospyBus(rospy, publish, listen)
    env = FakeReachEnv()
    sim = SimRobotServer(bus, env, cfg)

    def reply(**kw):
        proto.write(json.dumps(kw, default=str) + "\n")
        proto.flush()

    reply(ready=True, node=rospy.get_name())
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "reset":
            sim.reset(seed=int(req["seed"]), max_steps=10_000)
            reply(goal=env.goal.tolist())
        elif op == "start":
            sim.start()
            reply(ok=True)
        elif op == "stop":
            sim.stop()
            reply(success=sim.success, steps=sim.steps, commands_applied=sim.commands_applied)
        elif op == "success":
            reply(success=sim.success)
        elif op == "messages":
            with bus.lock:
                got = list(bus.received.get(req["topic"], ()))
            last = got[-1] if got else None
            if last is not None and "header" in last:
                last = {"header": last["header"]}
            reply(count=len(got), last=last)
        elif op == "connections":
            reply(count=bus.connections(req["topic"]))
        elif op == "publish":
            bus.publish(req["topic"], req["msg"])
            reply(ok=True)
        elif op == "quit":
            sim.close()
            reply(ok=True)
            break
        else:
            reply(error=f"unknown op {op!r}")


if __name__ == "__main__":
    main()
