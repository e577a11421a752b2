"""``s2robot deploy checkpoint=PATH robot=<config> [dry_run=true]``: run a trained policy on a robot.

Builds the robot from ``robot/<config>.yaml`` (``backend: rosbridge`` for a ROS 1/2 robot behind rosbridge_server,
``backend: rospy`` for a ROS 1 master reached directly, ``backend: sim`` for a built-in MuJoCo task), loads the
policy with ``s2robot.load_policy``, checks that the policy's cameras / proprio / action sizes match the robot config,
and runs ``episodes`` episodes of the fixed-rate control loop with the safety layer. ``dry_run=true`` publishes every command to the shadow topics
(``shadow_prefix + topic``) only. ``record=PATH`` appends every deployed episode to a zarr store.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from s2robot.ros.control_loop import ChunkPolicy, ControlLoop, EpisodeReport, LoopConfig, TorchPolicy
from s2robot.ros.robot import Robot, RobotConfig
from s2robot.ros.safety import SafetyFilter, Watchdog

LOG = logging.getLogger("s2robot.deploy")


def build_robot(cfg: RobotConfig, dry_run: bool = False, image_size=None) -> Robot:
    """The Robot for ``cfg.backend`` (not yet connected)."""
    if cfg.backend == "sim":
        from s2robot.ros.sim_robot import SimRobot

        sim = dict(cfg.sim)
        size = image_size or cfg.image_size or sim.get("image_size", 96)
        return SimRobot(task=sim.get("task", "lift_cube"), image_size=tuple(size) if isinstance(size, (list, tuple))
                        else size, cameras=tuple(cfg.cameras) or tuple(sim.get("cameras", ("front", "wrist"))),
                        env_kwargs=sim.get("env_kwargs"), max_episode_steps=sim.get("max_episode_steps"))
    if cfg.backend == "rospy":
        from s2robot.ros.rospy_robot import RospyRobot

        return RospyRobot(cfg, dry_run=dry_run, image_size=image_size)
    from s2robot.ros.rosbridge import RosbridgeRobot

    return RosbridgeRobot(cfg, dry_run=dry_run, image_size=image_size)


def check_policy_matches(policy, cfg: RobotConfig) -> None:
    """Raise a clear error when the policy's inputs/outputs do not fit the robot config."""
    meta = getattr(policy, "shape_meta", None)
    if meta is None:
        return
    missing = [c for c in meta.cameras if c not in cfg.cameras]
    if missing and cfg.backend != "sim":
        raise ValueError(f"policy needs cameras {meta.cameras} but robot config {cfg.name!r} has "
                         f"{sorted(cfg.cameras)} (missing {missing})")
    if meta.action_dim != cfg.action.dim:
        raise ValueError(f"policy emits {meta.action_dim}-dim actions but robot {cfg.name!r} has action.dim="
                         f"{cfg.action.dim}")
    if cfg.backend != "sim" and meta.proprio_dim and meta.proprio_dim != cfg.proprio_dim:
        raise ValueError(f"policy expects proprio of size {meta.proprio_dim}; robot {cfg.name!r} proprio segments "
                         f"give {cfg.proprio_dim}")


def run_episodes(robot: Robot, policy: ChunkPolicy, robot_cfg: RobotConfig, loop_cfg: LoopConfig, episodes: int,
                 seed: int = 0, recorder=None, between=None) -> list[EpisodeReport]:
    """Run ``episodes`` episodes; SimRobot episodes are reset with seeds ``seed, seed+1, ...``."""
    from s2robot.ros.sim_robot import SimRobot

    safety = SafetyFilter(robot_cfg.action, robot_cfg.safety, 1.0 / loop_cfg.rate_hz)
    reports = []
    for ep in range(episodes):
        if isinstance(robot, SimRobot):
            robot.reset(seed=seed + ep)
            success_fn = lambda: robot.success  # noqa: E731
        else:
            success_fn = None
            if between is not None and ep > 0:
                between(ep)
        watchdog = Watchdog(1.0 / loop_cfg.rate_hz, robot_cfg.safety.stale_periods)
        loop = ControlLoop(robot, policy, safety, watchdog, loop_cfg, recorder=recorder, success_fn=success_fn)
        rep = loop.run_episode()
        if recorder is not None:
            recorder.end_episode(rep.success, rep.status)
        s = rep.summary()
        LOG.info("episode %d/%d: %s success=%s steps=%d commands=%d late=%d holds=%s latency p50 %.1f ms",
                 ep + 1, episodes, s["status"], s["success"], s["steps"], s["commands"], s["late_ticks"],
                 s["holds"], s["latency_ms_p50"])
        reports.append(rep)
    return reports


def _operator_reset(ep: int) -> None:
    if sys.stdin.isatty():
        input(f"episode {ep + 1}: reset the scene, then press Enter to start (Ctrl-C to stop) ")


def run(cfg) -> int:
    """CLI verb: see the module docstring. Returns a process exit code."""
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not cfg.get("checkpoint"):
        raise SystemExit("s2robot deploy: checkpoint=PATH is required (a directory with model.safetensors)")
    robot_cfg = RobotConfig.from_dict(OmegaConf.to_container(cfg.robot, resolve=True))
    if cfg.get("rate_hz"):
        robot_cfg.rate_hz = float(cfg.rate_hz)
    from s2robot import load_policy
    from s2robot.device import resolve_device

    device = resolve_device(cfg.get("device", "auto"))
    policy = load_policy(cfg.checkpoint, device=device)
    check_policy_matches(policy, robot_cfg)
    meta = getattr(policy, "shape_meta", None)
    image_size = robot_cfg.image_size or (meta.image_shape[:2] if meta is not None and meta.image_shape else None)
    robot = build_robot(robot_cfg, dry_run=bool(cfg.dry_run), image_size=image_size)
    loop_cfg = LoopConfig(rate_hz=robot_cfg.rate_hz, max_steps=int(cfg.max_steps),
                          temporal_ensemble=cfg.get("temporal_ensemble"), n_action_steps=cfg.get("n_action_steps"),
                          reconnect_timeout_s=float(cfg.get("reconnect_timeout_s", 10.0)),
                          realtime=robot_cfg.backend != "sim" or bool(cfg.get("sim_realtime", False)))
    recorder = None
    if cfg.get("record"):
        from s2robot.ros.recorder import EpisodeRecorder

        recorder = EpisodeRecorder(cfg.record, attrs={"robot": robot_cfg.name, "fps": robot_cfg.rate_hz,
                                                      "checkpoint": str(cfg.checkpoint)})
    out = Path(cfg.get("out") or "outputs/deploy")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reports: list[EpisodeReport] = []
    try:
        robot.connect()
        reports = run_episodes(robot, TorchPolicy(policy, device, cfg.get("n_action_steps")), robot_cfg, loop_cfg,
                               int(cfg.episodes), int(cfg.get("seed", 0)), recorder, between=_operator_reset)
    except KeyboardInterrupt:
        LOG.warning("interrupted: commanding stopped")
    finally:
        robot.close()
    summary: dict[str, Any] = {
        "robot": robot_cfg.name, "backend": robot_cfg.backend, "dry_run": bool(cfg.dry_run),
        "checkpoint": str(cfg.checkpoint), "episodes": [r.summary() for r in reports],
        "success_rate": (sum(r.success for r in reports) / len(reports)) if reports else None,
        "wall_s": time.time() - t0, "record": str(cfg.record) if cfg.get("record") else None,
    }
    (out / "deploy_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"deploy: {len(reports)} episode(s), success rate {summary['success_rate']}; summary in "
          f"{out / 'deploy_summary.json'}" + (f"; episodes recorded to {cfg.record}" if recorder else ""))
    return 0
