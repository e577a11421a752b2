"""ROS message dicts (rosbridge JSON) <-> numpy, for ROS 1 and ROS 2.

rosbridge carries every message as JSON: ``uint8[]`` fields (image data) are base64 strings, headers carry a stamp
that is ``{"secs", "nsecs"}`` on ROS 1 and ``{"sec", "nanosec"}`` on ROS 2. Everything built here for sending is
plain Python (``float``/``int``/``list``/``dict``): roslibpy's JSON encoder fails on numpy arrays and numpy
scalars and then drops the message silently, so :func:`to_plain` converts and :func:`check_json` proves it before a
message leaves.

Decoding is done lazily by the robot on its control thread (only the newest frame of each camera is decoded), so
the functions here are pure and cheap to call on demand.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

IMAGE_TYPE = "sensor_msgs/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/CompressedImage"
JOINT_STATE_TYPE = "sensor_msgs/JointState"
POSE_STAMPED_TYPE = "geometry_msgs/PoseStamped"
JOINT_TRAJECTORY_TYPE = "trajectory_msgs/JointTrajectory"
FLOAT64_MULTIARRAY_TYPE = "std_msgs/Float64MultiArray"
FLOAT64_TYPE = "std_msgs/Float64"
GRIPPER_COMMAND_TYPE = "control_msgs/GripperCommand"
BOOL_TYPE = "std_msgs/Bool"
EMPTY_TYPE = "std_msgs/Empty"

COMMAND_TYPES = (JOINT_TRAJECTORY_TYPE, POSE_STAMPED_TYPE, FLOAT64_MULTIARRAY_TYPE)
GRIPPER_TYPES = (FLOAT64_TYPE, FLOAT64_MULTIARRAY_TYPE, GRIPPER_COMMAND_TYPE)
CAMERA_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3}


def normalize_type(msg_type: str) -> str:
    """``"sensor_msgs/msg/Image"`` (ROS 2 spelling) -> ``"sensor_msgs/Image"``; the short form is canonical."""
    parts = msg_type.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return f"{parts[0]}/{parts[2]}"
    return msg_type


def ros_type_name(msg_type: str, ros_version: int) -> str:
    """The type string to advertise: ``pkg/Name`` on ROS 1, ``pkg/msg/Name`` on ROS 2."""
    short = normalize_type(msg_type)
    if ros_version == 2:
        pkg, name = short.split("/")
        return f"{pkg}/msg/{name}"
    return short


# ----------------------------------------------------------------------------------------------------------- time
def stamp_to_sec(stamp: Mapping[str, Any]) -> float:
    """A ROS 1 ``{"secs", "nsecs"}`` or ROS 2 ``{"sec", "nanosec"}`` stamp -> float seconds.

    roslibpy's own ``Ros.get_time()``/``Time`` only know the ROS 1 spelling, so stamps are handled here.
    """
    if "secs" in stamp and "nsecs" in stamp:
        return int(stamp["secs"]) + int(stamp["nsecs"]) * 1e-9
    if "sec" in stamp and "nanosec" in stamp:
        return int(stamp["sec"]) + int(stamp["nanosec"]) * 1e-9
    raise ValueError(f"not a ROS time stamp (need secs/nsecs or sec/nanosec): {dict(stamp)!r}")


def sec_to_stamp(t: float, ros_version: int) -> dict[str, int]:
    """Float seconds -> the stamp dict of ``ros_version`` (1 or 2); nanoseconds in [0, 1e9)."""
    total_ns = int(round(float(t) * 1e9))
    sec, nsec = divmod(total_ns, 1_000_000_000)
    if ros_version == 1:
        return {"secs": int(sec), "nsecs": int(nsec)}
    if ros_version == 2:
        return {"sec": int(sec), "nanosec": int(nsec)}
    raise ValueError(f"ros_version must be 1 or 2, got {ros_version!r}")


def duration(t: float, ros_version: int) -> dict[str, int]:
    """A ``time_from_start``-style duration; same field names as stamps on each ROS version."""
    return sec_to_stamp(t, ros_version)


def make_header(t: float, frame_id: str, ros_version: int, seq: int = 0) -> dict[str, Any]:
    """``std_msgs/Header``: ROS 1 has a ``seq`` field, ROS 2 does not."""
    header: dict[str, Any] = {"stamp": sec_to_stamp(t, ros_version), "frame_id": str(frame_id)}
    if ros_version == 1:
        header["seq"] = int(seq)
    return header


def header_stamp(msg: Mapping[str, Any]) -> float | None:
    """The header stamp of ``msg`` in seconds, or None when it has no header or a zero stamp."""
    header = msg.get("header")
    if not header or "stamp" not in header:
        return None
    t = stamp_to_sec(header["stamp"])
    return t if t > 0 else None


# ---------------------------------------------------------------------------------------------------- plain JSON
def to_plain(value: Any) -> Any:
    """Recursively convert numpy arrays/scalars (and tuples) to plain ``list``/``float``/``int``/``bool``.

    Raises ``ValueError`` on NaN/Inf so a non-finite number never reaches the wire.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"non-finite number {f} in an outgoing ROS message")
        return f
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot send {type(value).__name__} in a ROS message: {value!r}")


def check_json(msg: Mapping[str, Any]) -> None:
    """Raise if ``msg`` would not survive the strict JSON encoding that rosbridge needs."""
    json.dumps(msg, allow_nan=False)


# ------------------------------------------------------------------------------------------------------- images
def _bytes_field(data: Any) -> bytes:
    """A ``uint8[]`` field as rosbridge sends it: base64 string (usual) or a list of ints."""
    if isinstance(data, str):
        return base64.b64decode(data)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, Sequence):
        return bytes(np.asarray(data, dtype=np.uint8))
    raise TypeError(f"image data must be base64 str or a list of bytes, got {type(data).__name__}")


def decode_image(msg: Mapping[str, Any]) -> np.ndarray:
    """``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 (H, W, 3) upright RGB.

    Honours ``step`` (row stride with padding). Other encodings are an error naming the supported ones.
    """
    enc = msg.get("encoding", "")
    if enc not in _CHANNELS:
        raise ValueError(f"unsupported image encoding {enc!r}; supported: {sorted(_CHANNELS)}")
    h, w = int(msg["height"]), int(msg["width"])
    c = _CHANNELS[enc]
    step = int(msg.get("step") or w * c)
    buf = np.frombuffer(_bytes_field(msg["data"]), dtype=np.uint8)
    if buf.size < h * step or step < w * c:
        raise ValueError(f"image data has {buf.size} bytes, expected {h}x{step} (encoding {enc}, width {w})")
    img = buf[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc in ("bgr8", "bgra8"):
        img = img[..., [2, 1, 0]]
    elif c == 4:
        img = img[..., :3]
    elif c == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def decode_compressed_image(msg: Mapping[str, Any]) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png; ``format`` like ``"rgb8; jpeg compressed bgr8"``) -> uint8 RGB."""
    from PIL import Image

    fmt = str(msg.get("format", "")).lower()
    if not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ValueError(f"unsupported CompressedImage format {msg.get('format')!r}; expected jpeg or png")
    with Image.open(io.BytesIO(_bytes_field(msg["data"]))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_camera(msg: Mapping[str, Any], msg_type: str) -> np.ndarray:
    """Dispatch on the camera message type; returns uint8 (H, W, 3) RGB."""
    t = normalize_type(msg_type)
    if t == IMAGE_TYPE:
        return decode_image(msg)
    if t == COMPRESSED_IMAGE_TYPE:
        return decode_compressed_image(msg)
    raise ValueError(f"unsupported camera message type {msg_type!r}; expected one of {CAMERA_TYPES}")


def resize_image(img: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """uint8 (H, W, 3) -> (h, w, 3) with antialiased bilinear resampling; ``size`` is (h, w) or None (no-op)."""
    if size is None:
        return img
    h, w = int(size[0]), int(size[1])
    if img.shape[:2] == (h, w):
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def encode_image(rgb: np.ndarray, encoding: str = "rgb8", header: Mapping | None = None) -> dict[str, Any]:
    """uint8 (H, W, 3) RGB -> ``sensor_msgs/Image`` dict with base64 data (what a robot's camera driver sends)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    if encoding == "rgb8":
        arr = rgb
    elif encoding == "bgr8":
        arr = rgb[..., ::-1]
    elif encoding == "mono8":
        arr = rgb.mean(axis=2).astype(np.uint8)[..., None]
    else:
        raise ValueError(f"encode_image supports rgb8, bgr8, mono8; got {encoding!r}")
    arr = np.ascontiguousarray(arr)
    c = arr.shape[2]
    return {
        "header": dict(header or {}),
        "height": int(h),
        "width": int(w),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(w * c),
        "data": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def encode_compressed_image(rgb: np.ndarray, fmt: str = "jpeg", header: Mapping | None = None, quality: int = 90):
    """uint8 (H, W, 3) RGB -> ``sensor_msgs/CompressedImage`` dict (jpeg or png, base64 data)."""
    from PIL import Image

    buf = io.BytesIO()
    pil_fmt = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}.get(fmt.lower())
    if pil_fmt is None:
        raise ValueError(f"compressed format must be jpeg or png, got {fmt!r}")
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format=pil_fmt, **({"quality": quality} if pil_fmt == "JPEG" else {}))
    return {
        "header": dict(header or {}),
        "format": f"rgb8; {fmt.lower()} compressed bgr8",
        "data": base64.b64encode(buf.getvalue()).decode("ascii"),
    }


# -------------------------------------------------------------------------------------------------- joint states
def joint_state_values(msg: Mapping[str, Any], names: Sequence[str], field: str = "position") -> np.ndarray:
    """``sensor_msgs/JointState`` -> float32 (len(names),) of ``field``, reordered to ``names``.

    Drivers publish joints in any order (and sometimes several partial JointState messages); the error names the
    joints that are missing.
    """
    if field not in ("position", "velocity", "effort"):
        raise ValueError(f"joint state field must be position, velocity or effort, got {field!r}")
    msg_names = list(msg.get("name") or [])
    values = list(msg.get(field) or [])
    if len(values) != len(msg_names):
        raise ValueError(f"JointState has {len(msg_names)} names but {len(values)} {field} values")
    index = {n: i for i, n in enumerate(msg_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise KeyError(f"JointState lacks joints {missing}; it has {msg_names}")
    return np.asarray([values[index[n]] for n in names], dtype=np.float32)


def joint_state_msg(names: Sequence[str], position: Sequence[float], header: Mapping | None = None) -> dict:
    """Plain ``sensor_msgs/JointState`` dict (used by the test server acting as a robot)."""
    return to_plain(
        {"header": dict(header or {}), "name": list(names), "position": position, "velocity": [], "effort": []}
    )


def pose_position(msg: Mapping[str, Any]) -> np.ndarray:
    """``geometry_msgs/PoseStamped`` (or ``Pose``) -> float32 (7,) position xyz + quaternion xyzw."""
    pose = msg.get("pose", msg)
    p, q = pose["position"], pose["orientation"]
    return np.asarray([p["x"], p["y"], p["z"], q["x"], q["y"], q["z"], q["w"]], dtype=np.float32)


# ------------------------------------------------------------------------------------------------------ commands
def joint_trajectory_msg(
    names: Sequence[str], positions: Sequence[float], time_from_start: float, header: Mapping, ros_version: int
) -> dict:
    """A one-point ``trajectory_msgs/JointTrajectory`` reaching ``positions`` after ``time_from_start`` s."""
    if len(names) != len(positions):
        raise ValueError(f"{len(names)} joint names but {len(positions)} positions")
    point = {
        "positions": list(positions),
        "velocities": [],
        "accelerations": [],
        "effort": [],
        "time_from_start": duration(time_from_start, ros_version),
    }
    return to_plain({"header": dict(header), "joint_names": list(names), "points": [point]})


def pose_stamped_msg(position: Sequence[float], orientation: Sequence[float], header: Mapping) -> dict:
    """``geometry_msgs/PoseStamped`` from xyz and an xyzw quaternion."""
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in orientation)
    pose = {"position": {"x": x, "y": y, "z": z}, "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}
    return to_plain({"header": dict(header), "pose": pose})


def float64_multiarray_msg(values: Sequence[float]) -> dict:
    """``std_msgs/Float64MultiArray`` with an empty layout (a flat vector)."""
    return to_plain({"layout": {"dim": [], "data_offset": 0}, "data": list(values)})


def gripper_msg(value: float, msg_type: str, max_effort: float = 0.0) -> dict:
    """Gripper command: ``std_msgs/Float64``, ``std_msgs/Float64MultiArray`` or ``control_msgs/GripperCommand``."""
    t = normalize_type(msg_type)
    if t == FLOAT64_TYPE:
        return to_plain({"data": value})
    if t == FLOAT64_MULTIARRAY_TYPE:
        return float64_multiarray_msg([value])
    if t == GRIPPER_COMMAND_TYPE:
        return to_plain({"position": value, "max_effort": max_effort})
    raise ValueError(f"unsupported gripper message type {msg_type!r}; expected one of {GRIPPER_TYPES}")


def gripper_value(msg: Mapping[str, Any], msg_type: str) -> float:
    """Inverse of :func:`gripper_msg` (used by the test server)."""
    t = normalize_type(msg_type)
    if t == FLOAT64_TYPE:
        return float(msg["data"])
    if t == FLOAT64_MULTIARRAY_TYPE:
        return float(msg["data"][0])
    if t == GRIPPER_COMMAND_TYPE:
        return float(msg["position"])
    raise ValueError(f"unsupported gripper message type {msg_type!r}")
