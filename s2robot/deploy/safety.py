"""The safety layer: every command passes through here, whatever the policy does.

* ``SafetyFilter.filter`` turns a policy action (A,) into a safe one, or rejects it:
  non-finite actions (NaN/Inf) are rejected (the loop holds); position targets (for delta actions: the set-point
  integrated from the previous target, as the env does) are clamped to the workspace box
  (``space: ee``) or joint limits (``space: joint``), to ``max_delta`` from the measured position and to
  ``max_velocity`` from the previous target; the gripper to its range.
* ``Watchdog.check`` decides each tick whether commanding is allowed: not while the link is down, not while the
  observation is stale (age > ``stale_periods`` control periods), not while the e-stop is latched, and after any
  of these only again from an observation captured after the fault was seen and on the current link epoch.
* ``EStop`` is a thread-safe latch: once triggered it stays until ``reset()``.

Holding means *not commanding*: the robot's controller keeps its last (safe) target. Nothing is sent while the
link is down, so roslibpy never queues a motion command for replay after a reconnect.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from s2robot.deploy.action_config import ActionConfig, SafetyConfig


class PolicyFault(RuntimeError):
    """The policy kept emitting unusable actions (e.g. NaN) for too many consecutive ticks."""


@dataclass
class SafetyDecision:
    """Result of filtering one action. ``action`` float64 (A,), None when the action was rejected (hold);
    ``target`` float64 (len(position_indices),) the clamped absolute position target."""

    action: np.ndarray | None
    target: np.ndarray | None = None
    events: list[str] = field(default_factory=list)


def _per_dim(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise ValueError(f"safety.{name} needs 1 or {n} values, got {arr.size}")
    return arr


class SafetyFilter:
    """Stateful per-episode action filter (it remembers the last target for the velocity limit)."""

    def __init__(self, action: ActionConfig, safety: SafetyConfig, period: float):
        self.cfg = safety
        self.action_cfg = action
        self.period = float(period)
        self.pos = np.asarray(action.position_indices, dtype=np.int64)
        self.state = np.asarray(action.state_indices, dtype=np.int64)
        n = len(self.pos)
        self.low = np.asarray(safety.low, dtype=np.float64) if safety.low else np.full(n, -np.inf)
        self.high = np.asarray(safety.high, dtype=np.float64) if safety.high else np.full(n, np.inf)
        if action.space == "raw" and safety.low and len(safety.low) == action.dim:
            self.raw_low, self.raw_high = np.asarray(safety.low), np.asarray(safety.high)
        else:
            self.raw_low = self.raw_high = None
        self.max_delta = _per_dim(safety.max_delta, max(n, 1), "max_delta")[: max(n, 1)]
        self.max_velocity = _per_dim(safety.max_velocity, max(n, 1), "max_velocity")[: max(n, 1)]
        self.reset()

    def reset(self) -> None:
        """Forget the last target (start of an episode, or resuming after a hold)."""
        self.last_target: np.ndarray | None = None
        self.last_time: float | None = None
        self.consecutive_rejects = 0

    def _reject(self, reason: str) -> SafetyDecision:
        self.consecutive_rejects += 1
        if self.consecutive_rejects > self.cfg.max_consecutive_rejects:
            raise PolicyFault(f"{self.consecutive_rejects} consecutive actions rejected ({reason}); stopping")
        return SafetyDecision(None, None, [reason])

    def filter(self, action: np.ndarray, proprio: np.ndarray | None, now: float) -> SafetyDecision:
        """action (A,) float, proprio (P,) measured state, now (monotonic s) -> SafetyDecision."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_cfg.dim,):
            return self._reject(f"bad_shape{tuple(a.shape)}")
        if not np.all(np.isfinite(a)):
            return self._reject("nonfinite")
        out = a.copy()
        events: list[str] = []
        target = None
        if len(self.pos):
            if proprio is None or not np.all(np.isfinite(proprio[self.state])):
                return self._reject("no_state")
            measured = np.asarray(proprio, dtype=np.float64)[self.state]
            # Delta actions integrate on the set-point (the previous target), as the env and position controllers
            # do; the first command after a reset starts from the measured position.
            base = self.last_target if self.last_target is not None else measured
            raw = a[self.pos] + base if self.action_cfg.mode == "delta" else a[self.pos]
            lo, hi = self.low.copy(), self.high.copy()
            if np.any((raw < lo) | (raw > hi)):
                events.append("limit")
            d_lo, d_hi = measured - self.max_delta, measured + self.max_delta
            if np.any((raw < d_lo) | (raw > d_hi)):
                events.append("delta")
            lo, hi = np.maximum(lo, d_lo), np.minimum(hi, d_hi)
            if self.last_target is not None:
                dt = max(now - self.last_time, 1e-3)
                v = self.max_velocity * dt
                v_lo, v_hi = self.last_target - v, self.last_target + v
                if np.any((raw < v_lo) | (raw > v_hi)):
                    events.append("velocity")
                lo, hi = np.maximum(lo, v_lo), np.minimum(hi, v_hi)
            empty = lo > hi
            if np.any(empty):
                # Constraints disagree (robot outside the box by more than max_delta): move at most max_delta
                # from the measured position towards the box.
                events.append("infeasible")
                toward = np.clip(np.clip(measured, self.low, self.high), d_lo, d_hi)
                lo, hi = np.where(empty, toward, lo), np.where(empty, toward, hi)
            target = np.clip(raw, lo, hi)
            out[self.pos] = target - base if self.action_cfg.mode == "delta" else target
            self.last_target, self.last_time = target, now
        if self.raw_low is not None:
            clipped = np.clip(out, self.raw_low, self.raw_high)
            if np.any(clipped != out):
                events.append("limit")
            out = clipped
        g = self.action_cfg.gripper_index
        if g is not None:
            gv = float(np.clip(out[g], self.cfg.gripper_low, self.cfg.gripper_high))
            if gv != out[g]:
                events.append("gripper_limit")
            out[g] = gv
        self.consecutive_rejects = 0
        # float64 all the way to the wire: a float32 cast here would round a clamped target outward past its limit
        return SafetyDecision(out, target, events)


class EStop:
    """Software e-stop latch (thread-safe). ``trigger`` latches until ``reset``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._latched = False
        self.reason = ""
        self.count = 0

    def trigger(self, reason: str = "estop") -> None:
        with self._lock:
            if not self._latched:
                self.count += 1
            self._latched, self.reason = True, reason

    def reset(self) -> None:
        with self._lock:
            self._latched, self.reason = False, ""

    @property
    def latched(self) -> bool:
        with self._lock:
            return self._latched


class Watchdog:
    """Per-tick go/no-go: ``check`` returns ``"ok"`` or the reason commanding is not allowed now.

    Reasons: ``"disconnected"``, ``"estop"``, ``"no_obs"``, ``"stale"``, ``"link_reset"`` (the link epoch changed
    since the last check: it dropped and came back between two ticks, so everything planned before is void),
    ``"awaiting_fresh"`` (the fault cleared but the observation was captured before the last tick that saw it).
    """

    def __init__(self, period: float, stale_periods: float):
        self.max_age = float(stale_periods) * float(period)
        self.fault_time: float | None = None  # last tick at which a fault was seen; None when healthy
        self.epoch: int | None = None  # the robot's link epoch at the last check

    def check(self, obs_time: float | None, now: float, connected: bool, estop: bool, epoch: int) -> str:
        reason = None
        if not connected:
            reason = "disconnected"
        elif estop:
            reason = "estop"
        elif obs_time is None:
            reason = "no_obs"
        elif now - obs_time > self.max_age:
            reason = "stale"
        elif self.epoch is not None and epoch != self.epoch:
            reason = "link_reset"
        self.epoch = epoch
        if reason is not None:
            self.fault_time = now  # the last tick a fault was seen
            return reason
        if self.fault_time is not None:
            if obs_time <= self.fault_time:
                return "awaiting_fresh"
            self.fault_time = None
        return "ok"

    @property
    def in_fault(self) -> bool:
        return self.fault_time is not None
