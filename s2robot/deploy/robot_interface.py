"""The robot interface used for deployment, whatever the transport (ROS via rosbridge or rospy, the simulator).

``Robot`` is the contract of docs/INTERFACES.md: ``connect()``, ``get_observation() -> (obs, timestamp)``,
``send_action(action)``, ``close()``. The observation dict is the same one a simulated env or a dataset window
gives (``"<cam>_image"`` uint8 (H, W, 3) RGB, ``"proprio"`` float32 (P,)); ``timestamp`` is the capture time of the
oldest part of the observation on this process's ``time.monotonic()`` clock, so ``time.monotonic() - timestamp``
is its age. Actions are (A,) in the policy's (env) units.

Actions reach ``send_action`` as float64 straight from the safety filter: a float32 cast after clamping rounds a
target outward past its limit (by up to ~5e-9 for a limit of -0.0175), so nothing between the clamp and the wire
narrows the dtype.
"""

from __future__ import annotations

import abc

import numpy as np



class RobotDisconnected(RuntimeError):
    """The link to the robot is down; commanding stopped."""


class ObservationError(ValueError):
    """A received message cannot be turned into the observation the config describes (e.g. a JointState without a
    configured joint, an image encoding not supported). The message names the topic and what is wrong."""


class Robot(abc.ABC):
    """A robot the control loop can drive. Implementations: ``RosbridgeRobot``, ``RospyRobot``, ``SimRobot``."""

    #: action dimension A and the camera names, known after construction
    action_dim: int
    cameras: tuple[str, ...]

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the link; raise with a clear message when the robot cannot be reached."""

    @abc.abstractmethod
    def get_observation(self) -> tuple[dict[str, np.ndarray], float] | None:
        """Newest complete observation and its capture time (``time.monotonic()`` domain), or None if none yet.

        Raises ``RobotDisconnected`` when the link is down, ``ObservationError`` when a message does not fit the
        config.
        """

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> bool:
        """Command one (already safety-filtered) action (A,). Returns False when it was not sent (link down)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop commanding and release the link. Safe to call twice."""

    @property
    def is_connected(self) -> bool:
        return True

    @property
    def link_epoch(self) -> int:
        """Incremented every time the link drops; observations from an older epoch are never used again."""
        return 0

    def reset_setpoint(self) -> None:
        """Forget the set-point that delta actions integrate on (episode start, after a hold); the next delta
        starts from the measured position. No-op for robots that take the action as is."""

    def missing_inputs(self) -> dict[str, str]:
        """Config key -> topic of every input that has not delivered a message on the current link (empty for
        robots without topics)."""
        return {}

    def estop_latched(self) -> bool:
        """True while a software e-stop received from the robot side is latched."""
        return False

    def reset_estop(self) -> None:
        """Clear a latched e-stop (an operator action)."""

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()
