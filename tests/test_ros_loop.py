"""Control-loop mechanics without a network: chunk queue, ACT temporal ensembling, timing, sim robot lockstep."""

import threading
import time

import numpy as np
import pytest

from rosbridge_test_server import FakeReachEnv
from s2robot.deploy.action_config import ActionConfig, SafetyConfig
from s2robot.deploy.control_loop import ActionQueue, CallablePolicy, ControlLoop, LoopConfig
from s2robot.deploy.robot_interface import Robot
from s2robot.deploy.safety import SafetyFilter, Watchdog
from s2robot.deploy.sim_robot import SimRobot


def test_chunk_queue_skips_past_ticks_and_keeps_last_when_late():
    q = ActionQueue(None, None)
    q.add(10, np.arange(4, dtype=np.float32)[:, None], now_tick=12)  # computed from tick 10's obs, arrives at 12
    assert q.action(12)[0] == 2 and q.remaining(12) == 2 and q.action(13)[0] == 3 and q.action(14) is None
    q.add(20, np.arange(2, dtype=np.float32)[:, None], now_tick=25)  # everything already past
    assert q.action(25)[0] == 1
    q2 = ActionQueue(None, max_chunk=2)
    q2.add(0, np.arange(4, dtype=np.float32)[:, None], 0)
    assert q2.remaining(0) == 2


def test_act_temporal_ensembling_weights():
    m = 0.5
    q = ActionQueue(m, None)
    q.add(0, np.full((4, 1), 1.0, np.float32), 0)
    q.add(1, np.full((4, 1), 3.0, np.float32), 1)
    w = np.exp(-m * np.arange(2))
    assert q.action(1)[0] == pytest.approx((1 * w[0] + 3 * w[1]) / w.sum())  # oldest chunk weighted most
    assert q.action(4)[0] == pytest.approx(3.0)  # only the second chunk still covers tick 4
    assert q.action(5) is None


def _fake_sim():
    env = FakeReachEnv()
    return env, SimRobot(env=env)


def _loop(robot, policy, rate=50.0, **kw):
    a = ActionConfig(dim=4, space="ee", mode="delta", position_indices=[0, 1, 2], state_indices=[0, 1, 2],
                     gripper_index=3)
    s = SafetyConfig(low=[-1, -1, 0], high=[1, 1, 1], max_delta=0.1, max_velocity=10.0)
    return ControlLoop(robot, policy, SafetyFilter(a, s, 1 / rate), Watchdog(1 / rate, 3),
                       LoopConfig(rate_hz=rate, **kw), success_fn=lambda: robot.success)


def test_sim_robot_lockstep_chunked_policy_reaches_goal():
    env, robot = _fake_sim()
    robot.connect()
    robot.reset(seed=3)
    calls = []

    def chunk(history):  # 4-step chunks computed from 2 observations
        calls.append(len(history))
        d = env.expert(history[-1])
        return np.stack([d] * 4)

    rep = _loop(robot, CallablePolicy(chunk, n_obs_steps=2, n_action_steps=4, takes_history=True),
                max_steps=60, realtime=False).run_episode()
    assert rep.success and rep.status == "success"
    assert set(calls) == {2} and len(calls) < rep.commands  # one inference per chunk, not per tick


class ClockRobot(Robot):
    """A robot whose sensors stream on their own: every read is a fresh observation; commands are logged."""

    action_dim, cameras, success = 4, (), False

    def __init__(self):
        self.sent = []

    def connect(self):
        pass

    def get_observation(self):
        return {"proprio": np.array([0.0, 0.0, 0.5, 0.0], np.float32)}, time.monotonic()

    def send_action(self, action):
        self.sent.append((time.monotonic(), action))
        return True

    def close(self):
        pass


def test_realtime_loop_rate_and_slow_policy_does_not_block_ticks():
    robot = ClockRobot()

    def slow(obs):
        time.sleep(0.05)  # 2.5 periods at 50 Hz: inference runs off the loop thread
        return np.full((8, 4), 0.01, np.float32)

    rep = _loop(robot, CallablePolicy(slow, n_action_steps=8), max_steps=40, stop_on_success=False).run_episode()
    s = rep.summary()
    assert rep.steps == 40 and abs(s["rate_hz"] - 50) < 10, s
    assert rep.commands > 15 and rep.holds["waiting_policy"] >= 1
    assert len(rep.inference_times) < rep.commands  # chunks, not one inference per tick
    assert all(lat >= 0.04 for lat in rep.latencies)  # obs -> command includes the inference time


def _inference_threads():
    return {t for t in threading.enumerate() if t.name == "s2robot-inference" and t.is_alive()}


def test_policy_exception_propagates_and_stops():
    """The error reaches the caller, and the episode stops there: no inference, no command, no worker after it."""
    robot = ClockRobot()
    before = _inference_threads()
    calls = []

    def crash_on_third(obs):
        calls.append(len(robot.sent))
        if len(calls) == 3:
            raise RuntimeError("policy crashed")
        return np.full((2, 4), 0.01, np.float32)

    ticks = []
    loop = _loop(robot, CallablePolicy(crash_on_third, n_action_steps=2), max_steps=100, stop_on_success=False)
    with pytest.raises(RuntimeError, match="policy crashed"):
        loop.run_episode(on_tick=lambda k, rep: ticks.append(k))
    sent = len(robot.sent)
    assert len(calls) == 3  # nothing was asked of the policy after it raised
    assert 1 <= sent <= 4, sent  # the two good chunks were executed (2 actions each), nothing after the crash
    assert ticks and ticks[-1] < 20  # the episode ended at the crash, not at max_steps
    assert _inference_threads() - before == set()  # the inference worker was shut down
    assert len(robot.sent) == sent


class BlindRobot(ClockRobot):
    """Connected, but its camera topic never delivers (or its joint states do not fit the config)."""

    def __init__(self, error=None):
        super().__init__()
        self.error = error

    def get_observation(self):
        if self.error:
            from s2robot.deploy.robot_interface import ObservationError

            raise ObservationError(self.error)
        return None

    def missing_inputs(self):
        return {} if self.error else {"robot.cameras.front.topic": "/front/image_rect"}


@pytest.mark.parametrize("error, detail", [
    (None, "no message on /front/image_rect (robot.cameras.front.topic)"),
    ("/joint_states (robot.joint_state_topic): JointState lacks joints ['j_4']", "lacks joints ['j_4']"),
])
def test_episode_without_usable_observation_ends_naming_the_input(error, detail):
    robot = BlindRobot(error)
    rep = _loop(robot, CallablePolicy(lambda obs: np.zeros(4, np.float32)), max_steps=200,
                input_timeout_s=0.3).run_episode()
    assert rep.status == "no_input" and detail in rep.detail and rep.steps < 40
    assert rep.holds["bad_obs" if error else "no_obs"] == rep.steps - 1 and robot.sent == []  # the last tick ends it
