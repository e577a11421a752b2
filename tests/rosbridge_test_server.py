"""A rosbridge-v2-protocol test server (websockets, loopback only, bounded lifetime) and a simulated robot on it.

``RosbridgeTestServer`` speaks the subset of the rosbridge v2 JSON protocol that roslibpy uses (advertise,
unadvertise, publish, subscribe, unsubscribe, call_service for ``/rosapi/get_time``). Fault knobs: ``latency_s``
(delay of every server->client message), ``drop_prob`` (drop server->client publishes, seeded), ``handshake_delay_s``,
``disconnect(refuse_for_s)`` (close every client link and refuse handshakes for a while), ``restart(down_s)`` (stop
and start again on the same port).

``SimRobotServer`` puts a gymnasium env behind the server as "the robot": at ``rate_hz`` on its own clock it applies
the newest command received, steps the env, and publishes camera images, joint states and the end-effector pose
with header stamps (``stamp_offset_s`` makes them stale). It never sees the policy: only ROS messages.
``start(sync=True)`` makes it a simulator in step with its controller instead (like a simulated robot on sim time):
it advances one control period when a command arrives, or on its own with the hold action after ``hold_after``
periods without one, so a slow policy still lets time pass.

``run_bridge_episodes`` drives a policy through all of it (robot client, control loop, safety layer) on given seeds.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import numpy as np

from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig


class RosbridgeTestServer:
    """Minimal rosbridge v2 server on 127.0.0.1 (never another interface). Use as a context manager."""

    def __init__(self, port: int = 0, ros_version: int = 2, max_lifetime_s: float = 120.0, latency_s: float = 0.0,
                 drop_prob: float = 0.0, seed: int = 0, handshake_delay_s: float = 0.0):
        self.host = "127.0.0.1"
        self.handshake_delay_s = handshake_delay_s  # answer websocket handshakes this late (slow/far server)
        self.port = port
        self.ros_version = ros_version
        self.max_lifetime_s = max_lifetime_s
        self.latency_s = latency_s
        self.drop_prob = drop_prob
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._started = threading.Event()
        self._stop_evt: asyncio.Event | None = None
        self._refuse_until = 0.0
        self._clients: set = set()
        self._subs: dict[str, set] = defaultdict(set)  # topic -> connections
        self.advertised: dict[str, str] = {}
        self.received: dict[str, list[tuple[float, dict]]] = defaultdict(list)  # topic -> [(monotonic, msg)]
        self._callbacks: dict[str, list[Callable[[dict], None]]] = defaultdict(list)
        self.lock = threading.Lock()
        self.n_connections = 0
        self.n_handshakes = 0  # websocket handshakes received (a client retrying shows up here)
        self.handshakes_answered = 0  # ... and answered (after handshake_delay_s)
        self.refused = 0

    # ------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> RosbridgeTestServer:
        self._thread = threading.Thread(target=self._run, name="rosbridge-test-server", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("test rosbridge server did not start")
        return self

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()
        async with serve(self._handler, self.host, self.port, process_request=self._process_request,
                         max_size=2**24) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            try:
                await asyncio.wait_for(self._stop_evt.wait(), timeout=self.max_lifetime_s)
            except asyncio.TimeoutError:
                pass
            server.close()

    def stop(self):
        if self._loop is not None and self._stop_evt is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop_evt.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    def restart(self, down_s: float = 0.5) -> None:
        """Stop the server (every client link drops), stay down ``down_s`` (connections refused: nothing listens),
        and start again on the same port; what was received and the robot-side callbacks are kept."""
        self.stop()
        self._subs.clear()
        self._clients.clear()
        self._started.clear()
        time.sleep(down_s)
        self.start()

    # ---------------------------------------------------------------------------------------------- protocol
    async def _process_request(self, connection, request):
        self.n_handshakes += 1
        if self.handshake_delay_s > 0:
            await asyncio.sleep(self.handshake_delay_s)
        self.handshakes_answered += 1
        if time.monotonic() < self._refuse_until:
            self.refused += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "rosbridge test server: link down\n")
        return None

    async def _handler(self, ws):
        self._clients.add(ws)
        self.n_connections += 1
        try:
            async for raw in ws:
                self._on_frame(ws, json.loads(raw))
        except Exception:  # noqa: BLE001 - a dropped client is normal here
            pass
        finally:
            self._clients.discard(ws)
            for conns in self._subs.values():
                conns.discard(ws)

    def _on_frame(self, ws, frame: dict[str, Any]):
        op = frame.get("op")
        topic = frame.get("topic")
        if op == "subscribe":
            self._subs[topic].add(ws)
        elif op == "unsubscribe":
            self._subs[topic].discard(ws)
        elif op == "advertise":
            self.advertised[topic] = frame.get("type", "")
        elif op == "unadvertise":
            self.advertised.pop(topic, None)
        elif op == "publish":
            msg = frame.get("msg", {})
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))
            for cb in list(self._callbacks.get(topic, ())):
                cb(msg)
        elif op == "call_service" and frame.get("service") == "/rosapi/get_time":
            now = M.sec_to_stamp(time.time(), self.ros_version)
            reply = {"op": "service_response", "id": frame.get("id"), "service": frame["service"],
                     "values": {"time": now}, "result": True}
            asyncio.ensure_future(ws.send(json.dumps(reply)))

    # -------------------------------------------------------------------------------------------- robot side
    def on_publish(self, topic: str, callback: Callable[[dict], None]) -> None:
        """Call ``callback(msg)`` (on the server thread) for each message a client publishes on ``topic``."""
        self._callbacks[topic].append(callback)

    def messages(self, topic: str) -> list[tuple[float, dict]]:
        with self.lock:
            return list(self.received.get(topic, ()))

    def n_subscribers(self, topic: str) -> int:
        return len(self._subs.get(topic, ()))

    def publish(self, topic: str, msg: dict) -> None:
        """Send ``msg`` on ``topic`` to every subscribed client (thread-safe), subject to latency and drops."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self.drop_prob > 0 and self._rng.random() < self.drop_prob:
            return
        payload = json.dumps({"op": "publish", "topic": topic, "msg": msg})

        def _send():
            for ws in list(self._subs.get(topic, ())):
                asyncio.ensure_future(self._safe_send(ws, payload))

        try:
            if self.latency_s > 0:
                loop.call_soon_threadsafe(loop.call_later, self.latency_s, _send)
            else:
                loop.call_soon_threadsafe(_send)
        except RuntimeError:  # the loop closed in between (server stopped or restarting): nothing to send to
            pass

    @staticmethod
    async def _safe_send(ws, payload):
        try:
            await ws.send(payload)
        except Exception:  # noqa: BLE001
            pass

    def disconnect(self, refuse_for_s: float = 0.0) -> None:
        """Drop every client link now; refuse new handshakes for ``refuse_for_s`` seconds."""
        self._refuse_until = time.monotonic() + refuse_for_s
        loop = self._loop

        def _close_all():
            for ws in list(self._clients):
                asyncio.ensure_future(ws.close(code=1001, reason="test disconnect"))
            self._subs.clear()

        loop.call_soon_threadsafe(_close_all)


class SimRobotServer:
    """A gymnasium env acting as the robot behind a ``RosbridgeTestServer``, described by a ``RobotConfig``.

    Publishes per ``cfg`` (cameras as Image rgb8/CompressedImage jpeg, ``joint_state_topic`` with the joint-state
    proprio segments, ``ee_pose_topic``) and applies commands from ``cfg.command`` (+ ``cfg.gripper``). Commands
    are absolute position targets; ``to_env_action(target, gripper, rest)`` turns them into the env's action (for a
    delta env: target - current measured position).
    """

    def __init__(self, server: RosbridgeTestServer, env, cfg: RobotConfig, rate_hz: float | None = None,
                 stamp_offset_s: float = 0.0, hold_action: np.ndarray | None = None,
                 setpoint_fn: Callable[[], np.ndarray] | None = None):
        self.server = server
        self.env = env
        self.cfg = cfg
        self.rate_hz = rate_hz or cfg.rate_hz
        self.stamp_offset_s = stamp_offset_s
        self.setpoint_fn = setpoint_fn  # the controller's current set-point (default: measured position)
        self.state_lock = threading.Lock()  # held while the env steps (privileged experts read state under it)
        self.hold_action = np.zeros(cfg.action.dim, np.float32) if hold_action is None else hold_action
        self._lock = threading.Lock()
        self._target: np.ndarray | None = None  # absolute position target (len(position_indices),)
        self._cmd_rest: np.ndarray | None = None  # full action of the newest command (non-position dims used)
        self._gripper: float | None = None
        self._last_gripper: float | None = None
        self.obs: dict | None = None
        self.info: dict = {}
        self.steps = 0
        self.success = False
        self.max_score = 0.0  # best info["score"] of the episode (partial task progress)
        self.max_steps: int | None = None
        self.commands_applied = 0
        self.publish_paused = False
        self._worker: threading.Thread | None = None
        self._tasks: queue.Queue = queue.Queue()
        self._running: dict | None = None
        self._stop = threading.Event()
        self.done = threading.Event()
        self.step_times: list[float] = []
        self.hold_steps = 0  # sync mode: steps of this episode taken on the timeout (no command arrived in time)
        self._command_event = threading.Event()
        self.command_log: list[tuple[float, np.ndarray]] = []  # (monotonic receive, env action applied)
        self.malformed: list[dict] = []  # Float64MultiArray commands of the wrong length (ignored)
        server.on_publish(cfg.command.topic, self._on_command)
        if cfg.gripper is not None:
            server.on_publish(cfg.gripper.topic, self._on_gripper)

    # --------------------------------------------------------------------------------------------- commands
    def _on_command(self, msg: dict):
        t = M.normalize_type(self.cfg.command.type)
        acfg = self.cfg.action
        if t == M.POSE_STAMPED_TYPE:
            target = M.pose_position(msg)[:3]
            rest = None
        elif t == M.JOINT_TRAJECTORY_TYPE:
            pt = msg["points"][0]
            order = {n: i for i, n in enumerate(msg["joint_names"])}
            target = np.asarray([pt["positions"][order[n]] for n in self.cfg.command.joint_names], np.float32)
            rest = None
        else:
            entries = self.cfg.command_indices()
            if len(msg["data"]) != len(entries):  # what a group controller would reject
                self.malformed.append(msg)
                return
            data = self.hold_action.astype(np.float32).copy()
            data[entries] = np.asarray(msg["data"], np.float32)
            target = data[acfg.position_indices]
            rest = data
        with self._lock:
            self._target = np.asarray(target, np.float32)
            self._cmd_rest = rest
            self.commands_applied += 1
        self._command_event.set()

    def _on_gripper(self, msg: dict):
        with self._lock:
            self._gripper = M.gripper_value(msg, self.cfg.gripper.type)

    def env_action(self) -> np.ndarray:
        """The env action for this step from the newest command (hold when none)."""
        acfg = self.cfg.action
        with self._lock:
            target, rest, grip = self._target, self._cmd_rest, self._gripper
            self._cmd_rest = None  # one-shot: non-position dims (e.g. yaw deltas) apply once per command
        a = self.hold_action.copy()
        if rest is not None:
            a[:] = rest
        if target is not None and acfg.position_indices:
            base = self.setpoint_fn() if self.setpoint_fn is not None else self.obs["proprio"][acfg.state_indices]
            a[acfg.position_indices] = target - base if acfg.mode == "delta" else target
        elif target is None and acfg.position_indices and acfg.mode == "absolute":
            a[acfg.position_indices] = self.obs["proprio"][acfg.state_indices]
        if grip is not None and acfg.gripper_index is not None:
            a[acfg.gripper_index] = grip
        elif self._last_gripper is not None and acfg.gripper_index is not None and rest is None:
            a[acfg.gripper_index] = self._last_gripper
        if acfg.gripper_index is not None:
            self._last_gripper = float(a[acfg.gripper_index])
        return a

    # ----------------------------------------------------------------------------------------- publishing
    def publish_observation(self):
        if self.publish_paused or self.obs is None:
            return
        cfg = self.cfg
        stamp = time.time() - self.stamp_offset_s
        header = M.make_header(stamp, "base_link", cfg.ros_version, self.steps)
        for cam, c in cfg.cameras.items():
            img = self.obs[f"{cam}_image"]
            if M.normalize_type(c.type) == M.COMPRESSED_IMAGE_TYPE:
                msg = M.encode_compressed_image(img, "jpeg", header)
            else:
                msg = M.encode_image(img, "rgb8", header)
            self.server.publish(c.topic, msg)
        proprio = self.obs["proprio"]
        names, values, i = [], [], 0
        for seg in cfg.proprio:
            v = proprio[i:i + seg.dim]
            i += seg.dim
            if seg.source == "joint_state":
                if seg.reduce == "none":
                    names += list(seg.names)
                    values += [float(x) / seg.scale for x in v]
                else:  # split a reduced value evenly over its joints
                    k = len(seg.names) if seg.reduce == "sum" else 1
                    names += list(seg.names)
                    values += [float(v[0]) / seg.scale / k] * len(seg.names)
            else:
                pos = [float(x) for x in v[:3]]
                quat = [float(x) for x in v[3:7]] if seg.size == 7 else [0.0, 0.0, 0.0, 1.0]
                self.server.publish(cfg.ee_pose_topic, M.pose_stamped_msg(pos, quat, header))
        if names:
            self.server.publish(cfg.joint_state_topic, M.joint_state_msg(names, values, header))

    # ---------------------------------------------------------------------------------------------- running
    # Every env call runs on one worker thread: an EGL rendering context belongs to the thread that made it.
    def _call(self, fn, wait: bool = True):
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="sim-robot", daemon=True)
            self._worker.start()
        box = {"ev": threading.Event()}
        self._tasks.put((fn, box))
        if wait:
            box["ev"].wait(30)
            if "err" in box:
                raise box["err"]
            return box.get("out")
        return box

    def _work(self):
        while True:
            fn, box = self._tasks.get()
            if fn is None:
                return
            try:
                box["out"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["err"] = e
            finally:
                box["ev"].set()

    def reset(self, seed: int, max_steps: int) -> dict:
        def _reset():
            with self.state_lock:
                self.obs, self.info = self.env.reset(seed=seed)
            self.steps, self.success, self.max_steps = 0, False, max_steps
            self.max_score, self.hold_steps = 0.0, 0
            self._target, self._cmd_rest, self._gripper, self._last_gripper = None, None, None, None
            self.done.clear()
            return self.obs

        return self._call(_reset)

    def step_once(self):
        with self.state_lock:
            a = self.env_action()
            self.obs, _, term, trunc, self.info = self.env.step(a)
        self.steps += 1
        self.success = self.success or bool(self.info.get("success", False))
        if "score" in self.info:
            self.max_score = max(self.max_score, float(self.info["score"]))
        self.command_log.append((time.monotonic(), a))
        if self.steps >= self.max_steps:  # a robot keeps running after success; only the step budget ends it
            self.done.set()

    def start(self, sync: bool = False, hold_after: float = 2.5):
        """Publish the first observation, then step on the worker thread until done/stop: at ``rate_hz`` on the
        robot's own clock, or (``sync``) once per received command / after ``hold_after`` periods without one.

        ``hold_after`` must exceed 1 + the loop's ``max_wait``: a command computed at a replanning tick leaves the
        loop up to ``max_wait`` periods into its slot, i.e. up to 1 + max_wait periods after the previous one."""
        self._stop.clear()
        self._command_event.clear()
        self._running = self._call(lambda: self._run(sync, hold_after), wait=False)

    def _run(self, sync: bool, hold_after: float):
        period = 1.0 / self.rate_hz
        self.publish_observation()
        t_next = time.monotonic() + period
        while not self._stop.is_set() and not self.done.is_set():
            if sync:
                if not self._command_event.wait(hold_after * period):
                    self.hold_steps += 1
                self._command_event.clear()
            else:
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                t_next += period
            if self._stop.is_set():
                break
            self.step_once()
            self.step_times.append(time.monotonic())
            self.publish_observation()

    def stop(self):
        self._stop.set()
        if self._running is not None:
            self._running["ev"].wait(10)
            if "err" in self._running:
                err, self._running = self._running["err"], None
                raise err
            self._running = None

    def close(self):
        """Stop stepping, close the env on the worker thread (its GL context lives there), end the worker."""
        self.stop()
        if self._worker is not None:
            if hasattr(self.env, "close"):
                self._call(self.env.close)
            self._tasks.put((None, None))
            self._worker.join(timeout=10)
            self._worker = None


def _wait_for_observation(robot, after: float, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = robot.get_observation()
        if got is not None and got[1] is not None and got[1] > after:
            return
        time.sleep(0.002)
    raise TimeoutError(f"no observation from the simulated robot within {timeout_s} s")


def run_bridge_episodes(env, robot_cfg: dict, seeds, make_policy: Callable, rate_hz: float, sync: bool = False,
                        max_steps: int | None = None, loop_kwargs: dict | None = None,
                        on_episode: Callable | None = None) -> list[dict]:
    """Run one episode per seed of ``make_policy(seed, sim)`` (a ``ChunkPolicy``) on ``env`` served as a ROS robot.

    ``robot_cfg`` is a robot config dict (``configs/robot/*.yaml``); its port/rate are filled in here. Everything
    between the policy and the simulator goes through ROS messages: RosbridgeRobot client -> ControlLoop ->
    SafetyFilter/Watchdog -> commands -> SimRobotServer. ``on_episode(seed, sim, report)`` runs after each episode.
    Returns per seed ``{"seed", "success", "steps", "max_score", "hold_steps", "report"}`` (``report`` an ``EpisodeReport``).
    """
    from s2robot.deploy.control_loop import ControlLoop, LoopConfig
    from s2robot.deploy.safety import SafetyFilter, Watchdog
    from s2robot.ros.rosbridge import RosbridgeRobot

    max_steps = int(max_steps or env.spec.max_episode_steps)
    seeds = list(seeds)
    out = []
    with RosbridgeTestServer(max_lifetime_s=60 + len(seeds) * (max_steps * 1.6 / rate_hz + 5)) as server:
        cfg = RobotConfig.from_dict({**robot_cfg, "port": server.port, "rate_hz": rate_hz})
        sim = SimRobotServer(server, env, cfg, rate_hz=rate_hz, setpoint_fn=lambda: env.unwrapped.target_pos,
                             hold_action=np.array([0, 0, 0, 0, -1], np.float32))
        robot = RosbridgeRobot(cfg)
        robot.connect()
        try:
            for seed in seeds:
                sim.reset(seed=seed, max_steps=max_steps)
                t_reset = time.monotonic()
                policy = make_policy(seed, sim)
                loop = ControlLoop(robot, policy, SafetyFilter(cfg.action, cfg.safety, 1 / rate_hz),
                                   Watchdog(1 / rate_hz, cfg.safety.stale_periods),
                                   LoopConfig(rate_hz=rate_hz, max_steps=max_steps + (2 if sync else 20),
                                              **(loop_kwargs or {})),
                                   success_fn=lambda: sim.success)
                sim.start(sync=sync)
                if sync:  # a simulator on sim time: the controller starts from the first observation, like reset
                    _wait_for_observation(robot, after=t_reset)
                rep = loop.run_episode(start_after=t_reset)
                sim.stop()
                if on_episode is not None:
                    on_episode(seed, sim, rep)
                out.append({"seed": seed, "success": bool(sim.success), "steps": sim.steps, "max_score": sim.max_score,
                            "hold_steps": sim.hold_steps, "report": rep})
        finally:
            sim.close()
            robot.close()
    return out


class FakeReachEnv:
    """Tiny gymnasium-style env for tests that must not depend on MuJoCo: move a point to a goal.

    Action (4,): ``[dx, dy, dz, gripper]`` (deltas clipped to ``max_delta``). Proprio (4,): ``[x, y, z, width]``.
    Images: ``front``/``wrist`` uint8 (size, size, 3) with the goal and the point drawn. Success: within 0.02.
    """

    def __init__(self, size: int = 16, max_delta: float = 0.05):
        import gymnasium as gym

        self.size, self.max_delta = size, max_delta
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.pos = np.zeros(3)
        self.goal = np.zeros(3)
        self.width = 0.08

    def _obs(self):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        for p, ch in ((self.goal, 1), (self.pos, 0)):
            i, j = (np.clip((p[:2] + 0.5) * (self.size - 1), 0, self.size - 1)).astype(int)
            img[i, j, ch] = 255
        return {"front_image": img, "wrist_image": img[::-1].copy(),
                "proprio": np.array([*self.pos, self.width], np.float32)}

    def reset(self, seed=None):
        rng = np.random.default_rng(seed)
        self.pos = rng.uniform(-0.2, 0.2, 3) + np.array([0, 0, 0.3])
        self.goal = rng.uniform(-0.2, 0.2, 3) + np.array([0, 0, 0.3])
        self.width = 0.08
        return self._obs(), {"success": False}

    def step(self, action):
        a = np.asarray(action, np.float64)
        self.pos = self.pos + np.clip(a[:3], -self.max_delta, self.max_delta)
        self.width = 0.08 * (1 - np.clip(a[3], -1, 1)) / 2
        success = bool(np.linalg.norm(self.pos - self.goal) < 0.02)
        return self._obs(), float(success), success, False, {"success": success}

    def expert(self, obs):
        """Privileged scripted expert: delta towards the goal (reads the goal from the env, the rest from obs)."""
        d = np.clip(self.goal - obs["proprio"][:3], -self.max_delta, self.max_delta)
        return np.array([*d, 0.0], np.float32)


FAKE_ROBOT_CFG = {
    "name": "fake_reach",
    "rate_hz": 20.0,
    "ros_version": 2,
    "cameras": {"front": {"topic": "/front/image_raw", "type": "sensor_msgs/Image"},
                "wrist": {"topic": "/wrist/image_raw/compressed", "type": "sensor_msgs/CompressedImage"}},
    "joint_state_topic": "/joint_states",
    "ee_pose_topic": "/ee_pose",
    "proprio": [{"source": "ee_pose", "size": 3},
                {"source": "joint_state", "names": ["finger_l", "finger_r"], "reduce": "sum"}],
    "action": {"dim": 4, "space": "ee", "mode": "delta", "position_indices": [0, 1, 2],
               "state_indices": [0, 1, 2], "gripper_index": 3},
    "command": {"topic": "/s2robot/ee_target", "type": "geometry_msgs/PoseStamped"},
    "gripper": {"topic": "/s2robot/gripper", "type": "std_msgs/Float64"},
    "safety": {"low": [-0.5, -0.5, 0.0], "high": [0.5, 0.5, 0.6], "max_delta": 0.06, "max_velocity": 2.0,
               "stale_periods": 3},
}
