"""The deployment fault matrix: one rosbridge robot (the project's test server + ``FakeReachEnv``) per scenario,
driven by the control loop + safety layer, and the same safety invariants asserted on every scenario:

* every command on a real topic is finite and within ``safety.low/high`` and the gripper range, exactly (float64
  as published, no tolerance);
* every command is within ``max_delta`` of the position measured in the observation it was computed from;
* every command was computed from a fresh observation (age at send <= the stale limit + the tick's inference wait),
  captured after the last fault (disconnect, server restart, e-stop) that preceded it;
* no command while disconnected, none replayed after a reconnect (header stamp close to the receive time), none
  while the e-stop is latched;
* in a dry run nothing on a real topic; a ``shadow_prefix`` that could reach one is refused before connecting.

``S2ROBOT_FAULT_MATRIX_TABLE=path.md`` writes the table of commands and holds per scenario (docs/ros.md).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from rosbridge_test_server import FAKE_ROBOT_CFG, FakeReachEnv, RosbridgeTestServer, SimRobotServer
from s2robot.deploy.config_types import ConfigError
from s2robot.deploy.control_loop import CallablePolicy, ControlLoop, EpisodeReport, LoopConfig
from s2robot.deploy.safety import SafetyFilter, Watchdog
from s2robot.ros import messages as M
from s2robot.ros.deploy import Terminated, signals_as_interrupts
from s2robot.ros.robot_config import RobotConfig
from s2robot.ros.rosbridge import RosbridgeRobot

pytestmark = pytest.mark.timeout(120)
RATE = 20.0
CMD, GRIP = FAKE_ROBOT_CFG["command"]["topic"], FAKE_ROBOT_CFG["gripper"]["topic"]
SHADOW = "/s2robot/shadow"
ROWS: list[dict] = []


class AuditedRobot(RosbridgeRobot):
    """A RosbridgeRobot that records, for every command it sends, the observation it was computed from."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.audit: list[dict] = []
        self._obs_info = None

    def get_observation(self):
        got = super().get_observation()
        self._obs_info = None if got is None else (got[1], got[0]["proprio"].astype(np.float64), self._epoch)
        return got

    def send_action(self, action):
        obs_time, proprio, epoch = self._obs_info
        ok = super().send_action(action)
        if ok:
            self.audit.append({"t": time.monotonic(), "obs_time": obs_time, "epoch": epoch, "link": self._epoch,
                               "measured": proprio[self.cfg.action.state_indices], "target": self._last_targets.copy(),
                               "estop": self.estop_latched()})
        return ok


class Scenario:
    """Server + simulated robot + audited robot + loop for one row of the matrix."""

    def __init__(self, name, server_kw=None, sim_kw=None, cfg_kw=None, dry_run=False, max_steps=40):
        self.name, self.max_steps, self.dry_run = name, max_steps, dry_run
        self.server = RosbridgeTestServer(max_lifetime_s=60, **(server_kw or {})).start()
        self.cfg = RobotConfig.from_dict({**FAKE_ROBOT_CFG, "port": self.server.port, "image_size": [12, 12],
                                          "reconnect_delay_s": 0.2, **(cfg_kw or {})})
        self.env = FakeReachEnv()
        self.sim = SimRobotServer(self.server, self.env, self.cfg, rate_hz=RATE, **(sim_kw or {}))
        self.robot = AuditedRobot(self.cfg, dry_run=dry_run)
        self.robot.connect()
        deadline = time.monotonic() + 5
        while self.server.n_subscribers("/joint_states") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.sim.reset(seed=len(ROWS), max_steps=10_000)
        self.events: list[tuple[float, str]] = []  # (monotonic, "cut" | "back" | "estop" | "reset" | "signal")
        self.report: EpisodeReport | None = None

    def mark(self, kind):
        self.events.append((time.monotonic(), kind))

    def track_link(self):
        """After a "cut": mark "down" once the client has seen the link drop, then "back" once it is up again."""
        kinds = [kind for _, kind in self.events]
        if "cut" in kinds and "down" not in kinds and not self.robot.is_connected:
            self.mark("down")
        elif "down" in kinds and "back" not in kinds and self.robot.is_connected:
            self.mark("back")

    def run(self, policy_fn, on_tick=None):
        cfg = self.cfg
        loop = ControlLoop(self.robot, CallablePolicy(policy_fn), SafetyFilter(cfg.action, cfg.safety, 1 / RATE),
                           Watchdog(1 / RATE, cfg.safety.stale_periods),
                           LoopConfig(rate_hz=RATE, max_steps=self.max_steps, stop_on_success=False,
                                      reconnect_timeout_s=5.0, input_timeout_s=5.0))
        self.report = EpisodeReport()
        t_reset = time.monotonic()
        self.sim.start()
        try:
            loop.run_episode(on_tick=on_tick, start_after=t_reset, report=self.report)
        finally:
            self.sim.stop()
            time.sleep(0.15)  # let the last commands arrive
        return self.report

    def close(self):
        self.sim.close()
        self.robot.close()
        self.server.stop()

    # ------------------------------------------------------------------------------------------ invariants
    def check(self):
        """Assert every safety invariant of the module docstring; record the table row."""
        cfg, s = self.cfg, self.cfg.safety
        real = self.server.messages(CMD) + self.server.messages(GRIP)
        shadow = self.server.messages(SHADOW + CMD)
        if self.dry_run:
            assert real == [] and set(self.server.advertised) <= {SHADOW + CMD, SHADOW + GRIP}, self.name
        lo, hi = np.array(s.low), np.array(s.high)
        for recv, msg in self.server.messages(CMD) + shadow:
            xyz = self.targets(msg)
            assert np.isfinite(xyz).all() and np.all(xyz >= lo) and np.all(xyz <= hi), (self.name, xyz)
            stamp = M.header_stamp(msg)  # (a Float64MultiArray has no header: the audit's epochs cover it)
            assert stamp is None or abs(time.time() - (time.monotonic() - recv) - stamp) < 0.25, (self.name, "replay")
        for _, msg in self.server.messages(GRIP) + self.server.messages(SHADOW + GRIP):
            assert np.isfinite(msg["data"]) and s.gripper_low <= msg["data"] <= s.gripper_high, self.name
        max_delta = np.broadcast_to(np.asarray(s.max_delta, np.float64), (3,))
        max_age = s.stale_periods / RATE + LoopConfig.max_wait / RATE + 0.02
        for a in self.robot.audit:
            assert np.all(np.abs(a["target"] - a["measured"]) <= max_delta + 1e-9), (self.name, "max_delta")
            assert a["t"] - a["obs_time"] <= max_age, (self.name, "stale observation", a["t"] - a["obs_time"])
            assert a["epoch"] == a["link"] and not a["estop"], self.name
            faults = [t for t, kind in self.events if kind in ("cut", "estop", "signal") and t < a["t"]]
            if faults:
                assert a["obs_time"] > max(faults), (self.name, "observation from before a fault")
        self._check_windows(real + shadow)
        r = self.report
        ROWS.append({"scenario": self.name, "status": r.status, "ticks": r.steps,
                     "real": len(self.server.messages(CMD)), "shadow": len(shadow), "holds": dict(r.holds),
                     "events": dict(r.safety_events)})

    def targets(self, msg) -> np.ndarray:
        """Position targets (3,) of a command message as received (float64)."""
        if M.normalize_type(self.cfg.command.type) == M.FLOAT64_MULTIARRAY_TYPE:
            assert len(msg["data"]) == len(self.cfg.command_indices()), (self.name, "malformed command", msg)
            full = np.full(self.cfg.action.dim, np.nan)
            full[self.cfg.command_indices()] = msg["data"]
            return full[self.cfg.action.position_indices]
        return np.array([msg["pose"]["position"][k] for k in "xyz"])

    def _check_windows(self, received):
        times = np.array([t for t, _ in received])
        spans = {"cut": "back", "estop": "reset", "signal": None}
        for t0, kind in self.events:
            if kind not in spans:
                continue
            ends = [t for t, k in self.events if k == spans[kind] and t > t0]
            t1 = min(ends) if ends else np.inf
            inside = times[(times > t0 + 0.1) & (times < t1)]  # 0.1 s: a command already on the wire at t0
            assert inside.size == 0, (self.name, kind, inside - t0)


@pytest.fixture
def scenario():
    made = []

    def make(name, **kw):
        made.append(Scenario(name, **kw))
        return made[-1]

    yield make
    for sc in made:
        sc.close()


@pytest.fixture(scope="module", autouse=True)
def matrix_table():
    yield
    path = os.environ.get("S2ROBOT_FAULT_MATRIX_TABLE")
    if path and ROWS:
        lines = ["| scenario | end status | ticks | commands (real topics) | commands (shadow) | holds "
                 "| safety events |", "|---|---|---|---|---|---|---|"]
        for r in ROWS:
            holds = ", ".join(f"{k} {v}" for k, v in sorted(r["holds"].items())) or "-"
            ev = ", ".join(f"{k} {v}" for k, v in sorted(r["events"].items())) or "-"
            lines.append(f"| {r['scenario']} | {r['status']} | {r['ticks']} | {r['real']} | {r['shadow']} | {holds} "
                         f"| {ev} |")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


def expert(sc):
    return sc.env.expert


def test_nominal(scenario):
    sc = scenario("nominal")
    rep = sc.run(expert(sc))
    sc.check()
    assert rep.status == "max_steps" and rep.commands >= 30 and len(sc.robot.audit) == rep.commands


def test_latency(scenario):
    sc = scenario("latency 50 ms", server_kw={"latency_s": 0.05})
    rep = sc.run(expert(sc))
    sc.check()
    assert rep.commands >= 25 and np.median(rep.latencies) > 0.05


def test_drops(scenario):
    sc = scenario("30 % of robot messages dropped", server_kw={"drop_prob": 0.3, "seed": 3})
    rep = sc.run(expert(sc))
    sc.check()
    assert rep.commands >= 10


def test_frozen_sensors(scenario):
    sc = scenario("sensors frozen for 1 s", max_steps=50)

    def freeze(k, rep):
        if k == 10:
            sc.sim.publish_paused = True
        if k == 30:
            sc.sim.publish_paused = False

    rep = sc.run(expert(sc), on_tick=freeze)
    sc.check()
    assert rep.holds["stale"] >= 10 and rep.commands >= 15


def test_stale_stamps(scenario):
    sc = scenario("stamps 1 s old, then fresh", sim_kw={"stamp_offset_s": 1.0})

    def heal(k, rep):
        if k == 15:
            sc.sim.stamp_offset_s = 0.0

    rep = sc.run(expert(sc), on_tick=heal)
    sc.check()
    assert rep.holds["stale"] >= 10 and rep.commands >= 10
    assert min(a["t"] for a in sc.robot.audit) > sc.robot.audit[0]["obs_time"]


def test_disconnect_with_refused_reconnects(scenario):
    sc = scenario("disconnect, reconnects refused 1.5 s", max_steps=90)

    def cut(k, rep):
        if k == 10:
            sc.mark("cut")
            sc.server.disconnect(refuse_for_s=1.5)
        sc.track_link()

    rep = sc.run(expert(sc), on_tick=cut)
    sc.check()
    assert rep.holds["disconnected"] >= 5 and sc.server.refused >= 1, (rep.holds, sc.server.refused)
    assert [kind for _, kind in sc.events] == ["cut", "down", "back"]
    assert any(a["t"] > sc.events[-1][0] for a in sc.robot.audit), "resumed after the reconnect"


def test_server_restart_on_the_same_port(scenario):
    sc = scenario("rosbridge restarted on the same port", max_steps=80)

    def restart(k, rep):
        if k == 10:
            sc.mark("cut")
            sc.server.restart(down_s=0.5)
        sc.track_link()

    rep = sc.run(expert(sc), on_tick=restart)
    sc.check()
    assert rep.holds["disconnected"] >= 1 and sc.server.n_connections >= 1
    assert [kind for _, kind in sc.events] == ["cut", "down", "back"]
    assert any(a["t"] > sc.events[-1][0] for a in sc.robot.audit), "resumed after the restart"


def test_estop_latch_and_reset(scenario):
    sc = scenario("e-stop, false (no effect), reset", max_steps=50)

    def estop(k, rep):
        if k == 10:
            sc.mark("estop")
            sc.server.publish("/s2robot/estop", {"data": True})
        if k == 20:
            sc.server.publish("/s2robot/estop", {"data": False})  # does not clear the latch
        if k == 30:
            sc.mark("reset")
            sc.server.publish("/s2robot/estop_reset", {})

    rep = sc.run(expert(sc), on_tick=estop)
    sc.check()
    assert rep.holds["estop"] >= 15 and any(a["t"] > sc.events[-1][0] for a in sc.robot.audit)


def test_nan_policy(scenario):
    sc = scenario("NaN policy")
    rep = sc.run(lambda obs: np.full(4, np.nan, np.float32))
    sc.check()
    assert rep.status == "policy_fault" and rep.commands == 0 and sc.server.messages(CMD) == []


def test_huge_output_policy(scenario):
    sc = scenario("huge-output policy (magnitudes 1 to 1e6, towards low then high)")
    rng, calls = np.random.default_rng(0), []

    def huge(obs):  # pushes every dimension towards its low limit for 20 calls, then towards its high limit
        calls.append(1)
        return ((1.0 if len(calls) > 20 else -1.0) * 10.0 ** rng.uniform(0, 6, 4)).astype(np.float32)

    rep = sc.run(huge)
    sc.check()
    assert rep.commands >= 30 and {"limit", "delta", "velocity", "gripper_limit"} & set(rep.safety_events)
    xyz = np.array([sc.targets(m) for _, m in sc.server.messages(CMD)])
    assert np.any(np.isclose(xyz, sc.cfg.safety.low) | np.isclose(xyz, sc.cfg.safety.high)), "limits reached"


def test_float64multiarray_command_with_its_own_gripper_topic(scenario):
    sc = scenario("Float64MultiArray command + gripper on its own topic",
                  cfg_kw={"command": {"topic": CMD, "type": "std_msgs/Float64MultiArray"}})
    rep = sc.run(expert(sc))
    sc.check()
    data = [m["data"] for _, m in sc.server.messages(CMD)]
    assert rep.commands >= 30 and {len(d) for d in data} == {3} and sc.sim.malformed == []  # x, y, z: no gripper
    assert len(sc.server.messages(GRIP)) == rep.commands and sc.sim.commands_applied == rep.commands


def test_dry_run(scenario):
    sc = scenario("dry run (shadow_prefix /s2robot/shadow)", dry_run=True)
    rep = sc.run(expert(sc))
    sc.check()
    assert rep.commands >= 30 and len(sc.server.messages(SHADOW + CMD)) == rep.commands


@pytest.mark.parametrize("prefix", ["", "/"])
def test_dry_run_prefix_that_reaches_real_topics_is_refused(prefix):
    with RosbridgeTestServer(max_lifetime_s=20) as server:
        bad = {**FAKE_ROBOT_CFG, "port": server.port, "shadow_prefix": prefix}
        with pytest.raises(ConfigError, match=r"robot.shadow_prefix="):
            RobotConfig.from_dict(bad)
        cfg = RobotConfig.from_dict({**bad, "shadow_prefix": SHADOW})
        cfg.shadow_prefix = prefix  # even a config mutated after validation cannot reach a real topic
        with pytest.raises(ValueError, match="dry run would publish on real topics"):
            RosbridgeRobot(cfg, dry_run=True).connect()
        time.sleep(0.1)
        assert server.n_connections == 0 and server.advertised == {} and not any(server.received.values())
    ROWS.append({"scenario": f"dry run, shadow_prefix {prefix!r}", "status": "refused before connecting",
                 "ticks": 0, "real": 0, "shadow": 0, "holds": {}, "events": {}})


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_ends_the_episode_and_keeps_its_report(scenario, sig):
    sc = scenario(f"{sig} at tick 15", max_steps=60)

    def send(k, rep):
        if k == 15:
            sc.mark("signal")
            os.kill(os.getpid(), getattr(signal, sig))
            time.sleep(0.5)  # the handler raises here, on the main thread

    expected = Terminated if sig == "SIGTERM" else KeyboardInterrupt
    with signals_as_interrupts(), pytest.raises(expected):
        sc.run(expert(sc), on_tick=send)
    sc.check()
    assert sc.report.status == "interrupted" and sc.report.summary()["partial"] and 10 <= sc.report.commands <= 16
