"""ROS message <-> numpy conversion, time stamps, config validation and the safety filter (no network)."""

import json

import numpy as np
import pytest

from s2robot.deploy.action_config import ActionConfig, SafetyConfig
from s2robot.deploy.safety import EStop, PolicyFault, SafetyFilter, Watchdog
from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("enc", ["rgb8", "bgr8"])
def test_image_roundtrip_rgb_bgr(enc):
    img = _rgb()
    msg = M.encode_image(img, enc)
    assert isinstance(msg["data"], str)  # base64, as rosbridge sends uint8[]
    np.testing.assert_array_equal(M.decode_image(msg), img)


def test_image_mono_and_padded_step_and_list_data():
    img = _rgb()
    mono = M.decode_image(M.encode_image(img, "mono8"))
    assert mono.shape == (6, 5, 3) and np.all(mono[..., 0] == mono[..., 2])
    # rows padded to 16 bytes, data as a list of ints (some bridges send that)
    h, w = 3, 4
    rows = np.zeros((h, 16), np.uint8)
    px = _rgb(h, w)
    rows[:, : w * 3] = px.reshape(h, -1)
    msg = {"height": h, "width": w, "encoding": "rgb8", "step": 16, "data": rows.reshape(-1).tolist()}
    np.testing.assert_array_equal(M.decode_image(msg), px)
    with pytest.raises(ValueError, match="unsupported image encoding"):
        M.decode_image({**msg, "encoding": "16UC1"})
    with pytest.raises(ValueError, match="bytes"):
        M.decode_image({**msg, "data": [0] * 10})


def test_compressed_png_exact_jpeg_close_and_resize():
    img = _rgb(32, 40)
    np.testing.assert_array_equal(M.decode_compressed_image(M.encode_compressed_image(img, "png")), img)
    smooth = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (32, 1, 3))
    dec = M.decode_compressed_image(M.encode_compressed_image(smooth, "jpeg", quality=95))
    assert dec.shape == smooth.shape and np.abs(dec.astype(int) - smooth).mean() < 3
    assert M.resize_image(img, (16, 20)).shape == (16, 20, 3)
    with pytest.raises(ValueError, match="jpeg or png"):
        M.decode_compressed_image({"format": "tiff", "data": ""})


def test_stamps_ros1_and_ros2():
    t = 1700000000.123456789
    s1, s2 = M.sec_to_stamp(t, 1), M.sec_to_stamp(t, 2)
    assert set(s1) == {"secs", "nsecs"} and set(s2) == {"sec", "nanosec"}
    assert abs(M.stamp_to_sec(s1) - t) < 1e-6 and abs(M.stamp_to_sec(s2) - t) < 1e-6
    assert 0 <= s2["nanosec"] < 1_000_000_000
    assert "seq" in M.make_header(t, "b", 1) and "seq" not in M.make_header(t, "b", 2)
    assert M.header_stamp({"header": {"stamp": {"sec": 0, "nanosec": 0}}}) is None
    with pytest.raises(ValueError, match="not a ROS time stamp"):
        M.stamp_to_sec({"s": 1})
    assert M.ros_type_name("sensor_msgs/Image", 2) == "sensor_msgs/msg/Image"
    assert M.normalize_type("sensor_msgs/msg/Image") == "sensor_msgs/Image"


def test_roslibpy_get_time_breaks_on_ros2_stamps_ours_does_not():
    """The roslibpy 2.1 pitfall: its Time/get_time only reads secs/nsecs."""
    from roslibpy import Time

    stamp2 = M.sec_to_stamp(12.5, 2)
    with pytest.raises(KeyError):
        Time(stamp2["secs"], stamp2["nsecs"])  # what Ros.get_time() does with the reply
    assert M.stamp_to_sec(stamp2) == 12.5


def test_joint_state_reordered_by_name():
    msg = M.joint_state_msg(["b", "c", "a"], [2.0, 3.0, 1.0])
    np.testing.assert_array_equal(M.joint_state_values(msg, ["a", "b", "c"]), [1, 2, 3])
    with pytest.raises(KeyError, match=r"lacks joints \['z'\]"):
        M.joint_state_values(msg, ["a", "z"])


def test_outgoing_messages_are_plain_json():
    hdr = M.make_header(1.5, "base", 2)
    jt = M.joint_trajectory_msg(["j1", "j2"], np.array([0.1, 0.2], np.float32), 0.1, hdr, 2)
    ps = M.pose_stamped_msg(np.array([1, 2, 3.0]), np.array([0, 0, 0, 1.0]), hdr)
    fa = M.float64_multiarray_msg(np.arange(3, dtype=np.float64))
    for m in (jt, ps, fa, M.gripper_msg(np.float32(0.5), "std_msgs/Float64"),
              M.gripper_msg(0.5, "control_msgs/GripperCommand", 10)):
        M.check_json(m)
        assert json.loads(json.dumps(m)) == m
    assert jt["points"][0]["time_from_start"] == {"sec": 0, "nanosec": 100000000}
    assert type(ps["pose"]["position"]["x"]) is float
    with pytest.raises(ValueError, match="non-finite"):
        M.to_plain([1.0, float("nan")])
    with pytest.raises(TypeError):
        M.to_plain({"x": object()})


def test_roslibpy_encoder_rejects_numpy_which_is_why_we_convert():
    """The roslibpy 2.1 pitfall: its encoder fails on numpy values (and the message would be dropped)."""
    from roslibpy.core import MessageEncoder

    with pytest.raises(TypeError):
        json.dumps({"data": np.zeros(2)}, cls=MessageEncoder)
    with pytest.raises(TypeError):
        json.dumps({"data": np.float32(1.0)}, cls=MessageEncoder)
    json.dumps(M.float64_multiarray_msg(np.zeros(2)), cls=MessageEncoder)


def _robot_cfg(**kw):
    base = dict(
        action={"dim": 4, "space": "ee", "mode": "delta", "position_indices": [0, 1, 2], "state_indices": [0, 1, 2],
                "gripper_index": 3},
        cameras={"front": {"topic": "/front/image_raw"}},
        ee_pose_topic="/ee_pose",
        proprio=[{"source": "ee_pose", "size": 3}, {"source": "joint_state", "names": ["fl", "fr"], "reduce": "sum"}],
        command={"topic": "/cmd", "type": "geometry_msgs/PoseStamped"},
        gripper={"topic": "/grip", "type": "std_msgs/Float64"},
        safety={"low": [-1, -1, 0], "high": [1, 1, 1], "max_delta": 0.1, "max_velocity": 1.0},
    )
    base.update(kw)
    return RobotConfig.from_dict(base)


def test_robot_config_validation_names_the_problem():
    cfg = _robot_cfg()
    assert cfg.proprio_dim == 4 and cfg.period == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown robot config keys"):
        _robot_cfg(bogus=1)
    with pytest.raises(ValueError, match=r"robot.cameras.front.topic='front': expected an absolute"):
        _robot_cfg(cameras={"front": {"topic": "front"}})
    with pytest.raises(ValueError, match="command type"):
        _robot_cfg(command={"topic": "/cmd", "type": "std_msgs/String"})
    with pytest.raises(ValueError, match="safety.low must be <="):
        _robot_cfg(safety={"low": [1, 1, 1], "high": [0, 0, 0]})
    with pytest.raises(ValueError, match="ros_version"):
        _robot_cfg(ros_version=3)
    with pytest.raises(ValueError, match="joint_names"):
        _robot_cfg(command={"topic": "/cmd", "type": "trajectory_msgs/JointTrajectory"})


def _filter(mode="delta", **safety):
    s = {"low": [-1, -1, 0], "high": [1, 1, 1], "max_delta": 0.1, "max_velocity": 1.0, **safety}
    a = ActionConfig(dim=4, space="ee", mode=mode, position_indices=[0, 1, 2], state_indices=[0, 1, 2],
                     gripper_index=3)
    return SafetyFilter(a, SafetyConfig(**s), period=0.1)


def test_safety_rejects_nonfinite_then_faults():
    f = _filter(max_consecutive_rejects=2)
    p = np.zeros(4, np.float32)
    assert f.filter(np.array([np.nan, 0, 0, 0]), p, 0.0).action is None
    assert f.filter(np.array([np.inf, 0, 0, 0]), p, 0.1).action is None
    with pytest.raises(PolicyFault):
        f.filter(np.array([np.nan, 0, 0, 0]), p, 0.2)
    assert _filter().filter(np.zeros(3), p, 0.3).action is None  # wrong shape is rejected, not sent


def test_safety_clamps_workspace_delta_velocity_gripper():
    f = _filter(mode="absolute")
    proprio = np.array([0.95, 0.0, 0.5, 0.0], np.float32)
    d = f.filter(np.array([5.0, 0.0, 0.5, 3.0]), proprio, now=0.0)
    # workspace says <= 1, max_delta says <= 1.05 -> 1.0; gripper clipped to 1
    np.testing.assert_allclose(d.action, [1.0, 0.0, 0.5, 1.0], atol=1e-6)
    assert {"limit", "delta", "gripper_limit"} <= set(d.events)
    # velocity: 1 unit/s * 0.05 s from the last target 1.0 -> 0.95 (delta allows 0.85)
    d = f.filter(np.array([0.5, 0.0, 0.5, 0.0]), proprio, now=0.05)
    np.testing.assert_allclose(d.action[0], 0.95, atol=1e-6)
    assert "velocity" in d.events


def test_safety_delta_mode_converts_and_bounds():
    f = _filter(mode="delta")
    proprio = np.array([0.0, 0.0, 0.02, 0.0], np.float32)
    d = f.filter(np.array([0.5, -0.5, -0.5, 0.0]), proprio, now=0.0)
    np.testing.assert_allclose(d.target, [0.1, -0.1, 0.0], atol=1e-6)  # z floor at 0
    np.testing.assert_allclose(d.action[:3], [0.1, -0.1, -0.02], atol=1e-6)
    # robot outside the box by more than max_delta: move at most max_delta towards it
    f.reset()
    d = f.filter(np.zeros(4), np.array([1.5, 0, 0.5, 0], np.float32), now=1.0)
    assert "infeasible" in d.events and d.target[0] == pytest.approx(1.4)


def test_watchdog_stale_disconnect_estop_and_fresh_resume():
    w = Watchdog(period=0.1, stale_periods=3)
    assert w.check(0.95, 1.0, True, False, 0) == "ok"
    assert w.check(0.60, 1.0, True, False, 0) == "stale"
    assert w.check(0.99, 1.01, True, False, 0) == "awaiting_fresh"  # captured before the fault was seen
    assert w.check(1.02, 1.05, True, False, 0) == "ok"
    assert w.check(1.1, 1.1, False, False, 1) == "disconnected"
    assert w.check(1.15, 1.2, True, True, 1) == "estop"
    assert w.check(1.19, 1.2, True, False, 1) == "awaiting_fresh"
    assert w.check(1.25, 1.3, True, False, 1) == "ok"
    # The link dropped and came back between two ticks (never seen as "disconnected"): hold once, then only a
    # frame captured after that tick counts.
    assert w.check(1.38, 1.4, True, False, 2) == "link_reset"
    assert w.check(1.39, 1.45, True, False, 2) == "awaiting_fresh"
    assert w.check(1.47, 1.5, True, False, 2) == "ok"
    e = EStop()
    e.trigger("x")
    e.trigger("y")
    assert e.latched and e.count == 1
    e.reset()
    assert not e.latched
