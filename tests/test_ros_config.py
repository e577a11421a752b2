"""Robot config validation (one line naming key, value, expectation), dry-run topic isolation, exact limits on the
wire, and the Float64MultiArray command layout. No network."""

import re

import numpy as np
import pytest

from s2robot.deploy.config_types import ConfigError
from s2robot.deploy.safety import SafetyFilter
from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig
from s2robot.ros.rosbridge import RosbridgeRobot

ARM7 = [f"joint{i}" for i in range(1, 8)]


def arm7_cfg(**over) -> dict:
    """A 7-joint arm + gripper on its own topic, joint-space absolute actions (8,), Float64MultiArray command."""
    cfg = {
        "name": "arm7", "port": 9090, "rate_hz": 20.0,
        "cameras": {"front": {"topic": "/front/image_raw"}},
        "joint_state_topic": "/joint_states",
        "proprio": [{"source": "joint_state", "names": ARM7}],
        "action": {"dim": 8, "space": "joint", "mode": "absolute", "position_indices": list(range(7)),
                   "state_indices": list(range(7)), "gripper_index": 7},
        "command": {"topic": "/arm_controller/commands", "type": "std_msgs/Float64MultiArray", "joint_names": ARM7},
        "gripper": {"topic": "/gripper/command", "type": "std_msgs/Float64"},
        "safety": {"low": [-0.0175] * 7, "high": [0.0175, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "max_delta": 10.0,
                   "max_velocity": 1000.0},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.mark.parametrize("over, key, value", [
    ({"rate_hz": "fast"}, "robot.rate_hz", "'fast'"),
    ({"port": "abc"}, "robot.port", "'abc'"),
    ({"secure": "yes"}, "robot.secure", "'yes'"),
    ({"estop_topic": 5}, "robot.estop_topic", "5"),
    ({"gripper": "/gripper/command"}, "robot.gripper", "'/gripper/command'"),
    ({"gripper": {"topic": "gripper/command"}}, "robot.gripper.topic", "'gripper/command'"),
    ({"joint_state_topic": "joint_states"}, "robot.joint_state_topic", "'joint_states'"),
    ({"estop_reset_topic": "reset"}, "robot.estop_reset_topic", "'reset'"),
    ({"safety": {"max_delta": "abc"}}, "robot.safety.max_delta", "'abc'"),
    ({"safety": {"max_delta": [0.1, 0.2]}}, "robot.safety.max_delta", r"\[0.1, 0.2\]"),
    ({"safety": {"max_velocity": [1.0] * 6}}, "robot.safety.max_velocity", r"\[1.0"),
    ({"safety": {"low": ["a"] * 7}}, r"robot.safety.low\[0\]", "'a'"),
    ({"shadow_prefix": ""}, "robot.shadow_prefix", "''"),
    ({"shadow_prefix": "/"}, "robot.shadow_prefix", "'/'"),
    ({"shadow_prefix": "//"}, "robot.shadow_prefix", "'//'"),
    ({"action": {"dim": "eight"}}, "robot.action.dim", "'eight'"),
    ({"proprio": [{"source": "joint_state", "names": ARM7, "field": "pos"}]}, r"robot.proprio\[\].field", "'pos'"),
    ({"command": {"joint_names": ARM7 + ["gripper"]}}, "robot.command.joint_names", r"\['joint1'"),
    ({"command": {"topic": "/joint_states"}}, "robot.command.topic", "'/joint_states'"),
    ({"image_size": [0, 64]}, "robot.image_size", r"\[0, 64\]"),
    ({"connect_timeout_s": -1}, "robot.connect_timeout_s", "-1"),
])
def test_every_bad_value_is_one_line_naming_key_value_and_expectation(over, key, value):
    with pytest.raises(ConfigError) as e:
        RobotConfig.from_dict(arm7_cfg(**over))
    msg = str(e.value)
    assert "\n" not in msg and "expected" in msg, msg
    assert re.match(rf"{key}={value}.*: expected ", msg), msg


def test_shadow_prefix_that_maps_an_output_onto_a_real_topic_is_refused():
    # /s2robot + /estop == the configured e-stop topic: a dry run would publish the command there
    with pytest.raises(ConfigError, match=r"robot.shadow_prefix='/s2'.*robot.command.topic.*robot.estop_topic"):
        RobotConfig.from_dict(arm7_cfg(shadow_prefix="/s2", command={"topic": "/robot/estop"},
                                       estop_topic="/s2/robot/estop"))
    ok = RobotConfig.from_dict(arm7_cfg())
    assert ok.shadow_topic("/gripper/command") == "/s2robot/shadow/gripper/command"


def test_dry_run_robot_never_targets_a_real_topic_even_if_the_config_was_bypassed():
    cfg = RobotConfig.from_dict(arm7_cfg())
    cfg.shadow_prefix = "/"  # mutated after validation: the robot checks again
    with pytest.raises(ValueError, match="dry run would publish on real topics"):
        RosbridgeRobot(cfg, dry_run=True)._outputs()
    cfg.shadow_prefix = "/s2robot/shadow"
    outs = RosbridgeRobot(cfg, dry_run=True)._outputs()
    assert {t for t, _ in outs.values()} == {"/s2robot/shadow/arm_controller/commands",
                                             "/s2robot/shadow/gripper/command"}


def test_float64multiarray_with_own_gripper_topic_carries_joint_entries_only():
    cfg = RobotConfig.from_dict(arm7_cfg())
    msgs = RosbridgeRobot(cfg).command_messages(np.array([0.01] * 7 + [0.5]), np.zeros(7, np.float32))
    assert len(msgs["command"]["data"]) == 7 and msgs["gripper"] == {"data": 0.5}
    # without a gripper topic the gripper entry rides in the array
    nogrip = RobotConfig.from_dict(arm7_cfg(gripper=None, command={"joint_names": []}, action={"space": "raw"},
                                            safety={"low": [], "high": []}))
    assert len(RosbridgeRobot(nogrip).command_messages(np.zeros(8), None)["command"]["data"]) == 8
    # a joint command whose array would carry more than the joints is refused at start-up
    with pytest.raises(ConfigError, match="robot.action=.*would carry action entries"):
        RobotConfig.from_dict(arm7_cfg(action={"gripper_index": None}, command={"joint_names": []}))


@pytest.mark.parametrize("mode", ["absolute", "delta"])
def test_huge_actions_give_targets_exactly_within_the_limits_on_the_wire(mode):
    """The clamp must hold in the published dtype: float32 rounding put -0.0175 at -0.017500000074505806."""
    cfg = RobotConfig.from_dict(arm7_cfg(action={"mode": mode}))
    lo, hi = np.array(cfg.safety.low), np.array(cfg.safety.high)
    robot = RosbridgeRobot(cfg)
    rng = np.random.default_rng(0)
    for k in range(200):
        if k % 20 == 0:
            filt = SafetyFilter(cfg.action, cfg.safety, cfg.period)
            robot.reset_setpoint()
        proprio = rng.uniform(-0.0175, 0.0175, 7).astype(np.float32)
        huge = (rng.choice([-1, 1], 8) * 10.0 ** rng.uniform(0, 6, 8)).astype(np.float32)
        d = filt.filter(huge, proprio, now=k * cfg.period)
        msgs = robot.command_messages(d.action, proprio)
        robot._setpoint = robot._last_targets  # what send_action does after a successful publish
        wire = np.array(M.float64_multiarray_msg(msgs["command"]["data"])["data"])
        assert np.all(wire >= lo) and np.all(wire <= hi), (wire - lo)[wire < lo]
        assert cfg.safety.gripper_low <= msgs["gripper"]["data"] <= cfg.safety.gripper_high
