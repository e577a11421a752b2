"""The shared arm: constants, analytic inverse kinematics and the action -> mocap/ctrl mapping.

Everything here is plain vectorised numpy with a leading batch dimension ``B`` so that a batched backend
(e.g. MuJoCo-Warp with N worlds) can reuse it unchanged.

Robot (``assets/scene.xml``): a 5-joint arm (base yaw ``j0``, shoulder/elbow/wrist pitch ``j1..j3``, wrist roll
``j4``) whose hand is welded to a mocap body; the arm joints follow the hand through the weld. A parallel gripper
has two position-actuated slide fingers (``finger_l``, ``finger_r``, opening 0..0.045 m each).

Action (float32, A=5, env units): ``[dx, dy, dz, dyaw, gripper]``
  - ``dx, dy, dz``: end-effector target displacement in metres per control step, clipped to ``max_delta``;
  - ``dyaw``: gripper yaw displacement in radians per control step, clipped to ``max_dyaw``;
  - ``gripper``: -1 fully open ... +1 fully closed (target finger opening, position controlled).
The target is integrated on the mocap set-point and clipped to the workspace box ``WORKSPACE_LOW/HIGH``.

Proprio (float32, P=9): ``[ee_x, ee_y, ee_z, gripper_width, j0, j1, j2, j3, j4]`` where ``ee`` is the point
between the finger pads (site ``ee``) in world metres and ``gripper_width`` the finger opening in metres.
"""

from __future__ import annotations

import numpy as np

ARM_JOINTS = ("j0", "j1", "j2", "j3", "j4")
FINGER_JOINTS = ("finger_l", "finger_r")
BASE_XY = np.array([0.0, 0.56])
SHOULDER_Z = 0.30
L_UPPER = 0.45
L_FORE = 0.45
WRIST_TO_HAND = 0.05
HAND_TO_EE = 0.095
FINGER_OPEN = 0.045  # opening of one finger when fully open (m); width = 2 * opening

WORKSPACE_LOW = np.array([-0.28, -0.25, 0.016])
WORKSPACE_HIGH = np.array([0.28, 0.25, 0.32])
YAW_LIMIT = np.pi / 2

ACTION_DIM = 5
PROPRIO_DIM = 9
DEFAULT_MAX_DELTA = 0.03
DEFAULT_MAX_DYAW = 0.2


PROPRIO_LOW = np.array([-1.0, -1.0, -1.0, -0.01] + [-2 * np.pi] * 5, dtype=np.float32)
PROPRIO_HIGH = np.array([1.0, 1.0, 1.0, 0.1] + [2 * np.pi] * 5, dtype=np.float32)


def action_bounds(max_delta: float = DEFAULT_MAX_DELTA, max_dyaw: float = DEFAULT_MAX_DYAW):
    """Low/high float32 (A,) bounds of the action box."""
    high = np.array([max_delta, max_delta, max_delta, max_dyaw, 1.0], dtype=np.float32)
    return -high, high


def hand_quat(yaw: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of the downward-pointing hand with gripper yaw ``yaw`` (B,) -> (B, 4).

    The hand frame is Rz(yaw) @ Rx(pi): its local +z points down along the fingers, fingers open along local x.
    """
    yaw = np.asarray(yaw, dtype=np.float64)
    zero = np.zeros_like(yaw)
    return np.stack([zero, np.cos(yaw / 2), np.sin(yaw / 2), zero], axis=-1)


def mocap_from_target(ee_pos: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End-effector target (B, 3) and yaw (B,) -> mocap (hand) position (B, 3) and quaternion (B, 4)."""
    ee_pos = np.asarray(ee_pos, dtype=np.float64)
    pos = ee_pos + np.array([0.0, 0.0, HAND_TO_EE])
    return pos, hand_quat(yaw)


def inverse_kinematics(ee_pos: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Arm joint angles (B, 5) placing the ``ee`` site at ``ee_pos`` (B, 3) pointing down with gripper ``yaw`` (B,).

    Elbow-up solution of the planar 2-link problem in the vertical plane through the base yaw axis.
    """
    ee_pos = np.asarray(ee_pos, dtype=np.float64)
    yaw = np.asarray(yaw, dtype=np.float64)
    wrist = ee_pos + np.array([0.0, 0.0, WRIST_TO_HAND + HAND_TO_EE])
    dx = wrist[..., 0] - BASE_XY[0]
    dy = wrist[..., 1] - BASE_XY[1]
    q0 = np.arctan2(dx, -dy)
    u = np.hypot(dx, dy)
    v = wrist[..., 2] - SHOULDER_Z
    d2 = u**2 + v**2
    c2 = np.clip((d2 - L_UPPER**2 - L_FORE**2) / (2 * L_UPPER * L_FORE), -1.0, 1.0)
    q2 = np.arccos(c2)
    q1 = np.arctan2(u, v) - np.arctan2(L_FORE * np.sin(q2), L_UPPER + L_FORE * np.cos(q2))
    q3 = np.pi - q1 - q2
    q4 = q0 - yaw
    return np.stack([q0, q1, q2, q3, q4], axis=-1)


def validate_action(action, action_dim: int = ACTION_DIM) -> np.ndarray:
    """Check an action and return it as float64 (A,); ValueError naming the problem otherwise."""
    try:
        arr = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action must be a numeric array of shape ({action_dim},), got {type(action).__name__}") from exc
    if arr.shape != (action_dim,):
        raise ValueError(
            f"action must have shape ({action_dim},) = [dx, dy, dz, dyaw, gripper], got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = [i for i in range(action_dim) if not np.isfinite(arr[i])]
        raise ValueError(f"action contains NaN/Inf at indices {bad}: {arr.tolist()}")
    return arr


def apply_action(
    target_pos: np.ndarray,
    target_yaw: np.ndarray,
    action: np.ndarray,
    max_delta: float = DEFAULT_MAX_DELTA,
    max_dyaw: float = DEFAULT_MAX_DYAW,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrate a batch of actions (B, 5) on the ee targets (B, 3) / yaws (B,).

    Returns the new target position (B, 3), yaw (B,) and finger position ctrl (B, 2) for ``finger_l/finger_r``.
    """
    action = np.asarray(action, dtype=np.float64)
    delta = np.clip(action[..., :3], -max_delta, max_delta)
    new_pos = np.clip(target_pos + delta, WORKSPACE_LOW, WORKSPACE_HIGH)
    new_yaw = np.clip(target_yaw + np.clip(action[..., 3], -max_dyaw, max_dyaw), -YAW_LIMIT, YAW_LIMIT)
    grip = np.clip(action[..., 4], -1.0, 1.0)
    opening = FINGER_OPEN * (1.0 - grip) / 2.0
    ctrl = np.stack([opening, opening], axis=-1)
    return new_pos, new_yaw, ctrl
