"""``s2robot deploy checkpoint=PATH robot=<config | ./my_robot.yaml> [dry_run=true] [check=true]``.

Checks the deploy options and the robot config (``robot/<config>.yaml`` or a user's own file; ``backend:
rosbridge`` for a ROS 1/2 robot behind rosbridge_server, ``rospy`` for a ROS 1 master reached directly, ``sim`` for
a built-in MuJoCo task) before anything connects, loads the policy with ``s2robot.load_policy``, checks that the
policy's cameras / proprio / action sizes match the robot config, waits for every input topic, and runs
``episodes`` episodes of the fixed-rate control loop with the safety layer. ``dry_run=true`` publishes every command
to the shadow topics (``shadow_prefix + topic``) only. ``record=PATH`` appends every deployed episode to a zarr
store. ``check=true`` runs the pre-flight check (``preflight.py``) instead and publishes nothing.

``<out>/deploy_summary.json`` is written on every ending once the robot is built (including SIGINT / SIGTERM, with
the running episode marked ``partial``; it is not recorded). Exit codes (``ExitCode``): 0 every episode ended
normally (success or max_steps) or the check passed; 1 a config / usage error (one line, before connecting); 3 robot
unreachable; 4 inputs missing or not fitting the config (pre-start wait, ``no_input`` episode, failed check);
5 policy fault; 6 link lost for longer than ``reconnect_timeout_s``; 130 SIGINT (Ctrl-C); 143 SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from s2robot.deploy.config_types import ConfigError, bad, typed_kwargs
from s2robot.deploy.control_loop import ChunkPolicy, ControlLoop, EpisodeReport, LoopConfig, TorchPolicy
from s2robot.deploy.recorder import EpisodeRecorder
from s2robot.deploy.robot_interface import ObservationError, Robot
from s2robot.deploy.safety import SafetyFilter, Watchdog
from s2robot.deploy.sim_robot import SimRobot
from s2robot.policies.action_queue import check_ensemble_coefficient, execution_for
from s2robot.ros.preflight import run_check, wait_for_inputs
from s2robot.ros.robot_config import RobotConfig
from s2robot.ros.rosbridge import RosbridgeRobot
from s2robot.ros.rospy_robot import RospyRobot  # importable without ROS 1: rospy is imported when it connects

LOG = logging.getLogger("s2robot.deploy")


class ExitCode(enum.IntEnum):
    """``s2robot deploy`` exit codes (documented in docs/ros.md)."""

    OK = 0
    CONFIG = 1  # also what ``SystemExit("message")`` gives
    UNREACHABLE = 3
    INPUTS = 4
    POLICY_FAULT = 5
    DISCONNECTED = 6
    INTERRUPTED = 130  # SIGINT / Ctrl-C (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


#: episode status -> exit code; the most severe over all episodes wins (statuses not listed: OK)
STATUS_EXIT = {"disconnected": ExitCode.DISCONNECTED, "policy_fault": ExitCode.POLICY_FAULT,
               "no_input": ExitCode.INPUTS}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised on the main thread so that it ends the run like Ctrl-C (summary written, link closed)."""


@contextlib.contextmanager
def signals_as_interrupts():
    """While active, SIGTERM raises ``Terminated`` (SIGINT raises ``KeyboardInterrupt`` as usual). Signal handlers
    belong to the main thread: elsewhere (deploy run from a thread) this does nothing."""
    def on_term(signum, frame):
        raise Terminated(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred():
    """While active (closing the link, writing the summary) SIGINT and SIGTERM are ignored (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class DeployOptions:
    """The ``configs/deploy.yaml`` keys (besides ``robot``), type-checked like the robot config."""

    checkpoint: str | None = None
    dry_run: bool = False
    check: bool = False
    check_listen_s: float = 2.0
    episodes: int = 1
    max_steps: int = 200
    rate_hz: float | None = None
    n_action_steps: int | None = None
    temporal_ensemble: float | str | None = None  # null: the policy's own; m >= 0: ACT; "off": whole chunks
    num_inference_steps: int | None = None  # diffusion policies: DDIM steps per chunk (null: the checkpoint's)
    compile_denoiser: bool = False  # diffusion policies: torch.compile the denoiser (the first chunk compiles)
    engine: str | None = None  # the frozen encoder's and the U-Net denoiser's engine (null: auto); speed only
    reconnect_timeout_s: float = 10.0
    input_timeout_s: float = 10.0
    sim_realtime: bool = False
    device: str = "auto"
    seed: int = 0
    record: str | None = None
    out: str = "outputs/deploy"

    def __post_init__(self):
        if not self.checkpoint:
            raise bad("checkpoint", self.checkpoint, "PATH, a checkpoint directory with model.safetensors (required)")
        for key in ("episodes", "max_steps"):
            if getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "an integer >= 1")
        for key in ("n_action_steps", "num_inference_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "an integer >= 1 or null")
        if self.rate_hz is not None and not 0 < self.rate_hz <= 1000:
            raise bad("rate_hz", self.rate_hz, "a number in (0, 1000] or null (robot.rate_hz)")
        try:
            check_ensemble_coefficient(self.temporal_ensemble, "temporal_ensemble", override=True)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for key in ("reconnect_timeout_s", "input_timeout_s", "check_listen_s"):
            if not getattr(self, key) > 0:
                raise bad(key, getattr(self, key), "a number > 0")

    @classmethod
    def from_cfg(cls, cfg) -> DeployOptions:
        d = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "robot"}
        return cls(**typed_kwargs(cls, d, ""))


def load_configs(cfg) -> tuple[DeployOptions, RobotConfig]:
    """Deploy options and robot config, checked; a bad value is ``SystemExit`` with one line (exit code 1)."""
    try:
        opts = DeployOptions.from_cfg(cfg)
        robot_cfg = RobotConfig.from_dict(cfg.robot)
        if opts.rate_hz is not None:
            robot_cfg = dataclasses.replace(robot_cfg, rate_hz=opts.rate_hz)
    except ConfigError as e:
        raise SystemExit(f"s2robot deploy: {e}") from None
    return opts, robot_cfg


def build_robot(cfg: RobotConfig, dry_run: bool = False, image_size=None, publish: bool = True) -> Robot:
    """The Robot for ``cfg.backend`` (not yet connected); ``publish=False`` for the pre-flight check."""
    if cfg.backend == "sim":
        sim = dict(cfg.sim)
        size = image_size or cfg.image_size or sim.get("image_size", 96)
        return SimRobot(task=sim.get("task", "lift_cube"), image_size=tuple(size) if isinstance(size, (list, tuple))
                        else size, cameras=tuple(cfg.cameras) or tuple(sim.get("cameras", ("front", "wrist"))),
                        env_kwargs=sim.get("env_kwargs"), max_episode_steps=sim.get("max_episode_steps"))
    if cfg.backend == "rospy":
        return RospyRobot(cfg, dry_run=dry_run, image_size=image_size, publish=publish)
    return RosbridgeRobot(cfg, dry_run=dry_run, image_size=image_size, publish=publish)


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
                 seed: int = 0, recorder=None, between=None,
                 reports: list[EpisodeReport] | None = None) -> list[EpisodeReport]:
    """Run ``episodes`` episodes; SimRobot episodes are reset with seeds ``seed, seed+1, ...``.

    Each episode's report is appended to ``reports`` when it starts, so an interrupt (which propagates) leaves the
    running one there, marked ``interrupted``. Episodes stop after one that ended in a fault (policy_fault,
    disconnected, no_input): the next would meet the same fault."""
    reports = [] if reports is None else reports
    safety = SafetyFilter(robot_cfg.action, robot_cfg.safety, 1.0 / loop_cfg.rate_hz)
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
        rep = EpisodeReport()
        reports.append(rep)
        try:  # a streaming robot: only frames captured from now on (after the operator's reset) drive commands
            loop.run_episode(report=rep, start_after=None if isinstance(robot, SimRobot) else time.monotonic())
        finally:
            if recorder is not None:
                with signals_deferred():  # an interrupted episode is not a demonstration: not recorded
                    if rep.status == "interrupted":
                        recorder.discard()
                    else:
                        recorder.end_episode(rep.success, rep.status)
        s = rep.summary()
        LOG.info("episode %d/%d: %s success=%s steps=%d commands=%d late=%d holds=%s latency p50 %.1f ms",
                 ep + 1, episodes, s["status"], s["success"], s["steps"], s["commands"], s["late_ticks"],
                 s["holds"], s["latency_ms_p50"])
        if rep.status in STATUS_EXIT:
            LOG.error("episode %d ended with %s (%s): not starting another", ep + 1, rep.status, rep.detail)
            break
    return reports


def _operator_reset(ep: int) -> None:
    if sys.stdin.isatty():
        input(f"episode {ep + 1}: reset the scene, then press Enter to start (Ctrl-C to stop) ")


def exit_code(ending: str, reports: list[EpisodeReport]) -> ExitCode:
    """The process exit code for how the run ended and what its episodes did (most severe wins)."""
    if ending == "terminated":
        return ExitCode.TERMINATED
    if ending == "interrupted":
        return ExitCode.INTERRUPTED
    if ending in ("unreachable", "no_input"):
        return ExitCode.UNREACHABLE if ending == "unreachable" else ExitCode.INPUTS
    codes = [STATUS_EXIT[r.status] for r in reports if r.status in STATUS_EXIT]
    severity = [ExitCode.INPUTS, ExitCode.POLICY_FAULT, ExitCode.DISCONNECTED]
    return min(codes, key=severity.index) if codes else ExitCode.OK


def _connect(robot: Robot) -> str:
    """Connect; returns "" or why the robot cannot be reached."""
    try:
        robot.connect()
    except ConnectionError as e:
        return str(e)
    return ""


def _start(robot: Robot, robot_cfg: RobotConfig, opts: DeployOptions) -> tuple[str, str]:
    """Connect and wait for every input; returns (ending, detail): ("", "") when ready."""

    why = _connect(robot)
    if why:
        return "unreachable", why
    if robot_cfg.backend == "sim":
        return "", ""
    missing = wait_for_inputs(robot, opts.input_timeout_s)
    if missing:
        return "no_input", "no message within {:g} s on {}".format(
            opts.input_timeout_s, ", ".join(f"{topic} ({key})" for key, topic in missing.items()))
    try:
        robot.get_observation()
    except ObservationError as e:
        return "no_input", f"observation does not fit the robot config: {e}"
    return "", ""


def _load_policy(opts: DeployOptions, robot_cfg: RobotConfig):
    # Imported on use: deployment and the ROS transports stay importable (and testable) without torch.
    from s2robot.device import resolve_device
    from s2robot.policies.diffusion import DiffusionPolicy, set_action_steps, set_compiled_denoiser, set_inference_steps
    from s2robot.policies.loading import load_policy, set_inference_engine

    try:
        device = resolve_device(opts.device)
        policy = load_policy(opts.checkpoint, device=device)
    except (FileNotFoundError, RuntimeError, ValueError) as e:  # a missing / unreadable checkpoint, no CUDA, ...
        raise SystemExit(f"s2robot deploy: checkpoint={opts.checkpoint} device={opts.device}: {e}") from None
    try:
        set_inference_steps(policy, opts.num_inference_steps)
        if isinstance(policy, DiffusionPolicy):  # it denoises a whole horizon: the chunk may also grow
            set_action_steps(policy, opts.n_action_steps)
        check_policy_matches(policy, robot_cfg)
        set_inference_engine(policy, opts.engine)
        compile_s = set_compiled_denoiser(policy, opts.compile_denoiser, warm_up_batch=1)
    except ValueError as e:
        raise SystemExit(f"s2robot deploy: {e}") from None
    if opts.compile_denoiser:
        LOG.info("compile_denoiser: the denoiser compiled in %.1f s, before connecting", compile_s)
    return policy, device


def run(cfg) -> int:
    """CLI verb: see the module docstring. Returns a process exit code (``ExitCode``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts, robot_cfg = load_configs(cfg)
    policy, device = _load_policy(opts, robot_cfg)
    meta = getattr(policy, "shape_meta", None)
    image_size = robot_cfg.image_size or (meta.image_shape[:2] if meta is not None and meta.image_shape else None)
    robot = build_robot(robot_cfg, dry_run=opts.dry_run, image_size=image_size, publish=not opts.check)
    torch_policy = TorchPolicy(policy, device, opts.n_action_steps)
    warm_s = torch_policy.warm_up(tuple(image_size) if image_size else None)  # engines build now, not in tick 1
    LOG.info("policy warmed up in %.1f s (engines built before connecting)", warm_s)
    if opts.check:
        return _run_check(robot, robot_cfg, torch_policy, opts)
    loop_cfg = LoopConfig(rate_hz=robot_cfg.rate_hz, max_steps=opts.max_steps,
                          temporal_ensemble=execution_for(policy, opts.temporal_ensemble),
                          n_action_steps=opts.n_action_steps, reconnect_timeout_s=opts.reconnect_timeout_s,
                          input_timeout_s=opts.input_timeout_s,
                          realtime=robot_cfg.backend != "sim" or opts.sim_realtime)
    recorder = None
    if opts.record:
        recorder = EpisodeRecorder(opts.record, attrs={"robot": robot_cfg.name, "fps": robot_cfg.rate_hz,
                                                       "checkpoint": str(opts.checkpoint)})
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    reports: list[EpisodeReport] = []
    ending, detail = "finished", ""
    try:
        with signals_as_interrupts():
            started, why = _start(robot, robot_cfg, opts)
            if started:
                ending, detail = started, why
                LOG.error("%s", why)
            else:
                run_episodes(robot, torch_policy, robot_cfg, loop_cfg, opts.episodes, opts.seed, recorder,
                             between=_operator_reset, reports=reports)
    except KeyboardInterrupt as e:
        ending = "terminated" if isinstance(e, Terminated) else "interrupted"
        LOG.warning("%s: commanding stopped", "SIGTERM" if ending == "terminated" else "interrupted")
    except BaseException as e:  # a bug: the traceback follows (exit code 1); the summary says so first
        ending, detail = "error", f"{type(e).__name__}: {e}"
        raise
    finally:
        with signals_deferred():
            robot.close()
            code = exit_code(ending, reports)
            summary = _summary(robot_cfg, opts, reports, ending, detail, code, time.time() - t0)
            (out / "deploy_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"deploy: {ending}, {len(reports)} episode(s), success rate {summary['success_rate']}, exit code "
          f"{int(code)} ({code.name}); summary in {out / 'deploy_summary.json'}"
          + (f"; episodes recorded to {opts.record}" if recorder else "") + (f"\n{detail}" if detail else ""))
    return int(code)


def _summary(robot_cfg: RobotConfig, opts: DeployOptions, reports: list[EpisodeReport], ending: str, detail: str,
             code: ExitCode, wall_s: float) -> dict[str, Any]:
    done = [r for r in reports if r.status != "interrupted"]
    code_name = (1, "ERROR") if ending == "error" else (int(code), code.name)  # an exception exits 1
    return {
        "robot": robot_cfg.name, "backend": robot_cfg.backend, "dry_run": opts.dry_run,
        "checkpoint": str(opts.checkpoint), "ending": ending, "detail": detail, "exit_code": code_name[0],
        "exit_name": code_name[1], "episodes": [r.summary() for r in reports],
        "success_rate": (sum(r.success for r in done) / len(done)) if done else None,
        "wall_s": wall_s, "record": opts.record,
    }


def _run_check(robot: Robot, robot_cfg: RobotConfig, policy: TorchPolicy, opts: DeployOptions) -> int:

    try:
        with signals_as_interrupts():
            why = _connect(robot)
            if why:
                print(f"check FAILED: {why}")
                return int(ExitCode.UNREACHABLE)
            if robot_cfg.backend == "sim":
                robot.reset(seed=opts.seed)
            problems = run_check(robot, robot_cfg, policy, timeout_s=opts.input_timeout_s,
                                 listen_s=opts.check_listen_s)
    except KeyboardInterrupt as e:
        return int(ExitCode.TERMINATED if isinstance(e, Terminated) else ExitCode.INTERRUPTED)
    finally:
        robot.close()
    return int(ExitCode.INPUTS if problems else ExitCode.OK)
