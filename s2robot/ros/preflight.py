"""``s2robot deploy ... check=true``: the pre-flight check. Connects, publishes nothing, and reports what the robot
sends against what the config and the policy expect.

Steps: wait up to ``timeout_s`` for every configured input topic; listen ``listen_s`` more to measure message
rates; per topic print the rate, and for cameras the image size and encoding, for the joint states the joint names
found vs configured (close spellings suggested), for stamped messages the clock offset (receive wall time - header
stamp); then build one observation, run one policy forward on it, pass the first action through a fresh safety
filter, and report the inference time and the observation-to-command latency. Every missing or mismatched item is
returned as one line; the caller exits non-zero when there is any.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable

import numpy as np

from s2robot.deploy.robot_interface import ObservationError, Robot, RobotDisconnected
from s2robot.deploy.safety import PolicyFault, SafetyFilter
from s2robot.ros import messages as M
from s2robot.ros.robot_config import RobotConfig


def wait_for_inputs(robot: Robot, timeout_s: float) -> dict[str, str]:
    """Wait until every input topic delivered a message; returns the config key -> topic of those that did not."""
    deadline = time.monotonic() + timeout_s
    while robot.missing_inputs() and time.monotonic() < deadline:
        time.sleep(0.02)
    return robot.missing_inputs()


def _configured_joints(cfg: RobotConfig) -> list[str]:
    names = [n for s in cfg.proprio if s.source == "joint_state" for n in s.names]
    return list(dict.fromkeys(names))


def _joint_problems(found: list[str], configured: list[str], what: str) -> list[str]:
    out = []
    for name in configured:
        if name not in found:
            close = difflib.get_close_matches(name, found, n=1)
            out.append(f"joint {name!r} ({what}) not in the JointState" + (f" (did you mean {close[0]!r}?)"
                                                                           if close else f"; it has {found}"))
    return out


def _input_lines(robot, cfg: RobotConfig, stale_s: float) -> tuple[list[str], list[str]]:
    """Per-input report lines and problems from ``robot.input_stats()`` (``InputStats`` per input key)."""
    lines, problems = [], []
    stats = robot.input_stats() if hasattr(robot, "input_stats") else {}
    for key, st in stats.items():
        if st.msg is None:
            continue
        rate = st.rate_hz
        parts = [f"{st.topic}: {st.count} msgs", f"{rate:.1f} Hz" if rate else "rate unknown (1 message)"]
        if rate is not None and 1.0 / rate > stale_s:
            problems.append(f"{st.topic} arrives every {1e3 / rate:.0f} ms, longer than the stale limit "
                            f"{stale_s * 1e3:.0f} ms (safety.stale_periods x period): the loop would hold")
        elif rate is None:
            problems.append(f"{st.topic}: only one message while listening (frozen or very slow sensor?)")
        if key.startswith("cam:"):
            cam = key[4:]
            try:
                img = M.decode_camera(st.msg, cfg.cameras[cam].type)
                enc = st.msg.get("encoding") or st.msg.get("format")
                parts.append(f"{img.shape[1]}x{img.shape[0]} {enc}")
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"{st.topic} (robot.cameras.{cam}): cannot decode: {e}")
        elif key == "joint_state":
            found = list(st.msg.get("name") or [])
            configured = _configured_joints(cfg)
            parts.append(f"joints found {found}, configured {configured}")
            problems += [f"{st.topic}: {p}" for p in _joint_problems(found, configured, "robot.proprio")]
            if cfg.command is not None and M.normalize_type(cfg.command.type) == M.JOINT_TRAJECTORY_TYPE:
                problems += [f"{st.topic}: {p}" for p in
                             _joint_problems(found, cfg.command.joint_names, "robot.command.joint_names")]
        if st.stamp_lags:
            lag = float(np.median(st.stamp_lags))
            parts.append(f"clock offset {lag * 1e3:+.1f} ms (receive - stamp)")
            if cfg.stamp_clock == "synced" and abs(lag) > stale_s:
                problems.append(f"{st.topic}: stamps are {lag:+.3f} s off this computer's clock, beyond the stale "
                                f"limit {stale_s:.3f} s: sync the clocks (chrony) or set robot.stamp_clock: offset")
        lines.append(", ".join(parts))
    return lines, problems


def _policy_lines(robot: Robot, cfg: RobotConfig, policy, obs_wait_s: float) -> tuple[list[str], list[str]]:
    """One observation -> one policy forward -> one safety-filtered action (not sent)."""
    deadline = time.monotonic() + obs_wait_s
    got = None
    try:
        while got is None and time.monotonic() < deadline:
            got = robot.get_observation()
            if got is None:
                time.sleep(0.02)
    except (ObservationError, RobotDisconnected) as e:
        return [], [f"observation: {e}"]
    if got is None:
        return [], ["no complete observation (every input at once) to run the policy on"]
    obs, obs_time = got
    policy.reset()
    t0 = time.monotonic()
    try:
        chunk = np.asarray(policy.predict([obs] * max(1, int(policy.n_obs_steps))), dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - the check reports it as a problem, whatever the policy raised
        return [], [f"policy forward failed on the live observation: {type(e).__name__}: {e}"]
    infer_s = time.monotonic() - t0
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in obs.items())
    lines = [f"observation: {shapes}; age {(t0 - obs_time) * 1e3:.1f} ms when the policy started"]
    if chunk.ndim != 2 or chunk.shape[1] != cfg.action.dim:
        return lines, [f"policy output shape {tuple(chunk.shape)}, expected (n, {cfg.action.dim}) (action.dim)"]
    problems = [] if np.isfinite(chunk).all() else ["policy output on the live observation is not finite"]
    try:
        decision = SafetyFilter(cfg.action, cfg.safety, cfg.period).filter(chunk[0], obs.get("proprio"),
                                                                           time.monotonic())
    except PolicyFault as e:
        decision, problems = None, problems + [f"safety filter: {e}"]
    latency = time.monotonic() - obs_time
    if decision is not None and decision.action is None:
        problems.append(f"the first action was rejected by the safety filter ({', '.join(decision.events)})")
    events = f", safety events {decision.events}" if decision is not None and decision.events else ""
    lines.append(f"policy forward {infer_s * 1e3:.1f} ms -> chunk {tuple(chunk.shape)}; observation-to-command "
                 f"latency {latency * 1e3:.1f} ms (nothing published){events}")
    return lines, problems


def run_check(robot: Robot, cfg: RobotConfig, policy, timeout_s: float = 10.0, listen_s: float = 2.0,
              out: Callable[[str], None] = print) -> list[str]:
    """Run the pre-flight check on a connected robot opened with ``publish=False``; prints the report with
    ``out`` and returns the problems (empty: ready to deploy)."""
    stale_s = cfg.safety.stale_periods * cfg.period
    missing = wait_for_inputs(robot, timeout_s)
    problems = [f"no message on {topic} ({key}) within {timeout_s:g} s" for key, topic in missing.items()]
    if len(missing) < len(robot.input_stats() if hasattr(robot, "input_stats") else {}):
        time.sleep(listen_s)
    lines, p = _input_lines(robot, cfg, stale_s)
    problems += p
    if robot.estop_latched():
        problems.append(f"the e-stop is latched ({cfg.estop_topic}); reset it on {cfg.estop_reset_topic}")
    if not missing:
        more, p = _policy_lines(robot, cfg, policy, obs_wait_s=timeout_s)
        lines += more
        problems += p
    out(f"pre-flight check of robot {cfg.name!r} ({cfg.backend}, control rate {cfg.rate_hz:g} Hz, stale limit "
        f"{stale_s * 1e3:.0f} ms):")
    for line in lines:
        out(f"  {line}")
    if problems:
        out(f"check FAILED: {len(problems)} problem(s):")
        for line in problems:
            out(f"  - {line}")
    else:
        out("check passed: every input arrived and fits the config; the policy runs on the live observation")
    return problems
