"""Fixed-rate control loop: observations in, safe commands out, inference off the loop thread.

Each tick ``k`` is scheduled at ``t0 + k * period`` on ``time.monotonic()`` (no drift accumulates). A tick that
starts more than ``late_tolerance`` periods after its slot is *late*; when whole slots were missed they are skipped
(never replayed in a burst) and counted.

Per tick: read the newest observation -> watchdog (link, e-stop, staleness, fresh-after-fault) -> push it into the
policy's observation history -> ask the inference thread for a new chunk when needed -> pick the action for this
tick -> safety filter -> ``robot.send_action``. Anything but ``"ok"`` from the watchdog means *hold*: no command,
the queued actions and the observation history are dropped (they were computed from the world before the fault),
and the policy is reset.

Action chunks are indexed by the tick of the observation they were computed from, so actions for ticks that passed
while the policy was thinking are skipped (latency compensation). ``temporal_ensemble=m`` turns on ACT temporal
ensembling: the action for tick ``k`` averages every chunk's prediction for ``k`` with weights ``exp(-m * i)``,
``i = 0`` for the oldest chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from s2robot.deploy.robot_interface import ObservationError, Robot, RobotDisconnected
from s2robot.deploy.safety import EStop, PolicyFault, SafetyFilter, Watchdog
from s2robot.policies.action_queue import ActionQueue, check_ensemble_coefficient

LOG = logging.getLogger(__name__)


class ChunkPolicy(Protocol):
    """What the loop needs from a policy: history of ``n_obs_steps`` obs dicts -> (n_action_steps, A) actions."""

    n_obs_steps: int
    n_action_steps: int

    def reset(self) -> None: ...

    def predict(self, history: list[dict[str, np.ndarray]]) -> np.ndarray: ...


class CallablePolicy:
    """Adapter for ``fn(obs) -> action (A,)`` or ``fn(history) -> (n, A)`` (scripted experts, test policies)."""

    def __init__(self, fn: Callable, n_obs_steps: int = 1, n_action_steps: int = 1, takes_history: bool = False,
                 reset_fn: Callable[[], None] | None = None):
        self.fn, self.n_obs_steps, self.n_action_steps = fn, n_obs_steps, n_action_steps
        self.takes_history, self.reset_fn = takes_history, reset_fn

    def reset(self) -> None:
        if self.reset_fn is not None:
            self.reset_fn()

    def predict(self, history):
        out = np.asarray(self.fn(history if self.takes_history else history[-1]), dtype=np.float32)
        return out.reshape(-1, out.shape[-1])


class TorchPolicy:
    """Adapter for an s2robot policy (``predict_action`` on dicts of (B, T_obs, ...) tensors).

    With a frozen image encoder the tokens of history frames are kept (:class:`FrameTokenCache`), so each camera
    frame is encoded once even when the loop replans every tick (temporal ensembling) with ``n_obs_steps > 1``.
    ``predict`` runs on the inference worker only (the cache is not thread-safe).
    """

    def __init__(self, policy, device="cpu", n_action_steps: int | None = None, token_history: bool = True):
        import torch  # imported on use: the loop itself (and the ROS side) never needs torch

        from s2robot.encoders.history import FrameTokenCache, frozen_token_encoder

        self.policy, self.device, self.torch = policy, torch.device(device), torch
        self.n_obs_steps = int(getattr(policy, "n_obs_steps", 1))
        self.n_action_steps = int(n_action_steps or getattr(policy, "n_action_steps", 1))
        encode = frozen_token_encoder(policy) if token_history else None
        cams = len(getattr(getattr(policy, "shape_meta", None), "cameras", []) or [])
        self.token_cache = None if encode is None or cams == 0 else FrameTokenCache(
            encode, capacity=4 * self.n_obs_steps * cams, device=self.device)

    def reset(self) -> None:
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def warm_up(self, image_size: tuple[int, int] | None) -> float:
        """One chunk on blank observations of the policy's own keys and sizes (``image_size`` (H, W) for its
        cameras), before any robot is driven: what builds on first use (the OpenVINO encoder and U-Net models,
        ``torch.compile``) does it here instead of inside the first episode's first tick. Leaves no trace (token
        cache cleared, policy reset). Returns the seconds it took."""
        policy = self.policy
        frame = {k: np.zeros(policy.lowdim_dim(k), np.float32) for k in policy.obs_keys if not k.endswith("_image")}
        if any(k.endswith("_image") for k in policy.obs_keys):
            if image_size is None:
                return 0.0  # sizes unknown: the first real frame builds the engines
            frame.update({k: np.zeros((*image_size, 3), np.uint8) for k in policy.obs_keys if k.endswith("_image")})
        t0 = time.monotonic()
        self.predict([frame] * self.n_obs_steps)
        if self.token_cache is not None:
            self.token_cache.clear()
        self.reset()
        return time.monotonic() - t0

    def predict(self, history):
        torch = self.torch
        arrays = {k: np.stack([h[k] for h in history])[None] for k in history[-1]}
        with torch.inference_mode():
            batch = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()
                     if self.token_cache is None or not k.endswith("_image")}
            if self.token_cache is not None:
                batch.update(self.token_cache.tokens({k: v for k, v in arrays.items() if k.endswith("_image")}))
            out = self.policy.predict_action(batch)
        return out[0, : self.n_action_steps].float().cpu().numpy()


@dataclass
class LoopConfig:
    rate_hz: float = 10.0
    max_steps: int = 200
    temporal_ensemble: float | None = None  # ACT coefficient m; None -> chunk execution
    n_action_steps: int | None = None  # execute at most this many actions of each chunk (None: the policy's)
    replan_margin: int = 1  # chunk mode: request the next chunk when <= this many actions remain
    late_tolerance: float = 0.5  # fraction of a period after its slot a tick counts as late
    max_wait: float = 0.5  # fraction of a period a tick may wait for a running inference when nothing is planned
    reconnect_timeout_s: float = 10.0  # end the episode when the link stays down longer
    input_timeout_s: float = 10.0  # end the episode when no usable observation (none / undecodable / stale) arrives
    stop_on_success: bool = True
    realtime: bool = True  # False: no sleeping and inference inline (deterministic, for lockstep simulation)

    def __post_init__(self):
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"rate_hz must be in (0, 1000], got {self.rate_hz}")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        self.temporal_ensemble = check_ensemble_coefficient(self.temporal_ensemble, "temporal_ensemble")


@dataclass
class EpisodeReport:
    """What happened in one deployed episode (times in seconds)."""

    status: str = "running"  # success | max_steps | disconnected | no_input | policy_fault | interrupted | stopped
    detail: str = ""  # why it ended, for the statuses that are faults (names topics, the policy error, ...)
    steps: int = 0
    commands: int = 0
    success: bool = False
    late_ticks: int = 0
    skipped_ticks: int = 0
    holds: Counter = field(default_factory=Counter)
    safety_events: Counter = field(default_factory=Counter)
    tick_times: list[float] = field(default_factory=list)  # monotonic start of each tick
    tick_errors: list[float] = field(default_factory=list)  # actual - scheduled start
    latencies: list[float] = field(default_factory=list)  # observation capture -> command sent
    tick_compute: list[float] = field(default_factory=list)  # tick start -> command sent (the loop's own share)
    inference_times: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(xs, q):
            return float(np.percentile(xs, q)) if xs else float("nan")

        periods = np.diff(self.tick_times) if len(self.tick_times) > 1 else np.zeros(0)
        return {
            "status": self.status, "partial": self.status in ("interrupted", "running"), "detail": self.detail,
            "success": self.success, "steps": self.steps, "commands": self.commands,
            "late_ticks": self.late_ticks, "skipped_ticks": self.skipped_ticks, "holds": dict(self.holds),
            "safety_events": dict(self.safety_events),
            "rate_hz": float(1.0 / periods.mean()) if periods.size else float("nan"),
            "jitter_ms": float(periods.std() * 1e3) if periods.size else float("nan"),
            "tick_error_p99_ms": pct(self.tick_errors, 99) * 1e3,
            "latency_ms_p50": pct(self.latencies, 50) * 1e3, "latency_ms_p99": pct(self.latencies, 99) * 1e3,
            "tick_compute_ms_p50": pct(self.tick_compute, 50) * 1e3,
            "tick_compute_ms_p99": pct(self.tick_compute, 99) * 1e3,
            "inference_ms_p50": pct(self.inference_times, 50) * 1e3,
        }


class _Inference:
    """One background worker: ``submit(history, tick, obs_time)`` (newest request wins), ``poll()`` results."""

    def __init__(self, policy: ChunkPolicy, inline: bool):
        self.policy, self.inline = policy, inline
        self._cv = threading.Condition()
        self._request = None
        self._results: list[tuple[int, float, np.ndarray, float]] = []
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._generation = 0
        self._thread = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name="s2robot-inference", daemon=True)
            self._thread.start()

    def _infer(self, req):
        history, tick, obs_time, gen = req
        t = time.monotonic()
        chunk = np.asarray(self.policy.predict(history), dtype=np.float32)
        return tick, obs_time, chunk, time.monotonic() - t, gen

    def _run(self):
        while True:
            with self._cv:
                while self._request is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                req, self._request = self._request, None
                self._busy = True
            try:
                res = self._infer(req)
                with self._cv:
                    if res[4] == self._generation:
                        self._results.append(res[:4])
                        self._cv.notify_all()
            except BaseException as e:  # noqa: BLE001 - re-raised on the loop thread
                with self._cv:
                    self._error = e
                    self._cv.notify_all()
            finally:
                with self._cv:
                    self._busy = False

    @property
    def idle(self) -> bool:
        with self._cv:
            return not self._busy and self._request is None

    def submit(self, history, tick, obs_time):
        req = (list(history), tick, obs_time, self._generation)
        if self.inline:
            self._results.append(self._infer(req)[:4])
            return
        with self._cv:
            self._request = req
            self._cv.notify()

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` s until a result (or error) is ready."""
        with self._cv:
            self._cv.wait_for(lambda: self._results or self._error is not None, timeout=max(timeout, 0.0))

    def invalidate(self):
        """Drop pending requests and results (after a fault): in-flight results are discarded on arrival."""
        with self._cv:
            self._generation += 1
            self._request = None
            self._results.clear()

    def poll(self):
        with self._cv:
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            out, self._results = self._results, []
        return out

    def close(self):
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class _EpisodeState:
    """What one episode's ticks share: the observation history, the action plan and the inference worker."""

    n_obs: int
    history: deque  # the last n_obs usable observations
    queue: ActionQueue
    infer: _Inference
    chunk_obs_time: dict[int, float] = field(default_factory=dict)  # chunk tick -> capture time of its observation
    down_since: float | None = None  # first tick of the current link outage
    starved_since: float | None = None  # first tick of the current run without a usable observation
    was_ok: bool = False  # the previous tick had a usable observation


class ControlLoop:
    """Runs episodes of ``policy`` on ``robot`` under ``safety`` at a fixed rate.

    Each tick of :meth:`run_episode`: ``_schedule`` (wait for the tick's slot, skip missed slots), ``_observe``
    (observation + watchdog; ends the episode on a long outage), then either ``_hold`` (no usable observation: drop
    the plan) or ``_plan`` (ask the policy for a chunk when due, take finished chunks) and ``_act`` (the planned
    action through the safety filter to the robot).
    """

    def __init__(self, robot: Robot, policy: ChunkPolicy, safety: SafetyFilter, watchdog: Watchdog,
                 cfg: LoopConfig, recorder=None, estop: EStop | None = None,
                 success_fn: Callable[[], bool] | None = None):
        self.robot, self.policy, self.safety, self.watchdog = robot, policy, safety, watchdog
        self.cfg, self.recorder, self.success_fn = cfg, recorder, success_fn
        self.estop = estop or EStop()  # local stop (e.g. Ctrl-C); the robot's e-stop topic is checked too
        self.period = 1.0 / cfg.rate_hz

    def _estopped(self) -> bool:
        return self.estop.latched or self.robot.estop_latched()

    def _starved_detail(self, status: str, bad_obs: str) -> str:
        return _starved_detail_text(status, bad_obs, self.robot.missing_inputs())

    def run_episode(self, on_tick: Callable[[int, EpisodeReport], None] | None = None,
                    start_after: float | None = None, report: EpisodeReport | None = None) -> EpisodeReport:
        """Run one episode. ``start_after`` (monotonic s): only observations captured after it are used (e.g. the
        moment the scene was reset), so a frame from the previous episode never drives the first command.
        ``on_tick(k, report)`` is called at the end of every tick (progress display, tests). ``report``: the
        ``EpisodeReport`` to fill (the caller keeps it when an interrupt ends the episode: a ``KeyboardInterrupt``
        marks it ``interrupted`` and is re-raised)."""
        cfg = self.cfg
        if start_after is not None:
            self.watchdog.fault_time = start_after
        rep = report if report is not None else EpisodeReport()
        n_obs = max(1, int(self.policy.n_obs_steps))
        st = _EpisodeState(n_obs, deque(maxlen=n_obs), ActionQueue(cfg.temporal_ensemble, cfg.n_action_steps),
                           _Inference(self.policy, inline=not cfg.realtime))
        self.policy.reset()
        self.safety.reset()
        self.robot.reset_setpoint()
        t0 = time.monotonic()
        k = 0
        try:
            while k < cfg.max_steps:
                k, slot, now = self._schedule(rep, t0, k)
                obs, obs_time, status = self._observe(rep, st, k, now)
                if status == "ended":
                    break
                if status != "ok":
                    self._hold(rep, st, k, status)
                else:
                    st.was_ok = True
                    self._plan(rep, st, k, slot, obs, obs_time)
                    self._act(rep, st, k, now, obs)
                    if self.success_fn is not None and self.success_fn():
                        rep.success = True
                        if cfg.stop_on_success:
                            rep.status = "success"
                            break
                if on_tick:
                    on_tick(k, rep)
                k += 1
            else:
                rep.status = "max_steps"
        except PolicyFault as e:
            LOG.error("policy fault: %s", e)
            rep.status, rep.detail = "policy_fault", str(e)
        except KeyboardInterrupt:  # SIGINT (or SIGTERM turned into it by deploy): keep what happened so far
            rep.status = "interrupted"
            raise
        finally:
            st.infer.close()
        if rep.status == "running":
            rep.status = "stopped"
        rep.success = rep.success or (self.success_fn() if self.success_fn is not None else False)
        return rep

    def _schedule(self, rep: EpisodeReport, t0: float, k: int) -> tuple[int, float, float]:
        """Wait for tick ``k``'s slot (realtime); skip whole missed slots, never burst. -> (k, slot, now)."""
        cfg = self.cfg
        slot = t0 + k * self.period
        if cfg.realtime:
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        now = time.monotonic()
        if cfg.realtime:
            behind = int((now - slot) // self.period)
            if behind >= 1:  # whole slots missed: skip them, never burst
                behind = min(behind, cfg.max_steps - 1 - k)  # never skip past the episode's last tick
                rep.skipped_ticks += behind
                k += behind
                slot = t0 + k * self.period
            if now - slot > cfg.late_tolerance * self.period:
                rep.late_ticks += 1
        rep.tick_times.append(now)
        rep.tick_errors.append(now - slot)
        rep.steps = k + 1
        return k, slot, now

    def _observe(self, rep: EpisodeReport, st: _EpisodeState, k: int, now: float):
        """Read the robot and ask the watchdog -> (obs, obs_time, status); status ``"ended"`` when the link or the
        inputs stayed down past their timeout (``rep.status`` / ``rep.detail`` say which)."""
        robot, bad_obs = self.robot, ""
        try:
            got = robot.get_observation()
            connected = robot.is_connected
        except RobotDisconnected:
            got, connected = None, False
        except ObservationError as e:
            got, connected, bad_obs = None, robot.is_connected, str(e)
        obs, obs_time = got if got is not None else (None, None)
        status = self.watchdog.check(obs_time, now, connected, self._estopped(), robot.link_epoch)
        if status == "no_obs" and bad_obs:
            status = "bad_obs"
            if not rep.holds["bad_obs"]:
                LOG.error("tick %d: observation does not fit the robot config: %s", k, bad_obs)
        if self._timed_out(rep, st, status, now, bad_obs):
            return None, None, "ended"
        return obs, obs_time, status

    def _timed_out(self, rep: EpisodeReport, st: _EpisodeState, status: str, now: float, bad_obs: str) -> bool:
        """Track how long the link / the inputs have been down; True (and the report says why) past the limit."""
        cfg = self.cfg
        if status == "disconnected":
            st.down_since = st.down_since or now
            if now - st.down_since > cfg.reconnect_timeout_s:
                rep.status, rep.detail = "disconnected", f"link down for more than {cfg.reconnect_timeout_s} s"
                return True
        else:
            st.down_since = None
        if status in ("no_obs", "bad_obs", "stale"):
            st.starved_since = st.starved_since or now
            if now - st.starved_since > cfg.input_timeout_s:
                rep.status, rep.detail = "no_input", self._starved_detail(status, bad_obs)
                LOG.error("no usable observation for %.1f s: %s", now - st.starved_since, rep.detail)
                return True
        else:
            st.starved_since = None
        return False

    def _hold(self, rep: EpisodeReport, st: _EpisodeState, k: int, status: str) -> None:
        """No command this tick; on the first such tick drop the history, the plan and any running inference."""
        rep.holds[status] += 1
        if st.was_ok:
            LOG.warning("tick %d: holding (%s)", k, status)
            st.history.clear()
            st.queue.clear()
            st.infer.invalidate()
            self.policy.reset()
            self.safety.reset()
            self.robot.reset_setpoint()
        st.was_ok = False

    def _take_chunks(self, rep: EpisodeReport, st: _EpisodeState, k: int) -> None:
        """Move finished inference results into the plan (re-raises a policy error here, on the loop thread)."""
        for tick, otime, chunk, dt in st.infer.poll():
            rep.inference_times.append(dt)
            st.chunk_obs_time[tick] = otime
            st.queue.add(tick, chunk, k)

    def _plan(self, rep: EpisodeReport, st: _EpisodeState, k: int, slot: float, obs: dict,
              obs_time: float) -> None:
        """Add ``obs`` to the history, ask for a chunk when the plan runs low, take the chunks that are ready."""
        cfg = self.cfg
        if not st.history:
            st.history.extend([obs] * st.n_obs)  # pad with the first fresh observation
        else:
            st.history.append(obs)
        self._take_chunks(rep, st, k)
        need = st.queue.wants_chunk(k, cfg.replan_margin)
        submitted = need and st.infer.idle
        if submitted:
            st.infer.submit(st.history, k, obs_time)
        if (submitted or st.queue.action(k) is None) and not st.infer.idle:
            # A fresher chunk is being computed (or nothing is planned): give it until ``max_wait`` of the
            # period; a slower policy leaves this tick to the current plan (or a hold).
            st.infer.wait(slot + cfg.max_wait * self.period - time.monotonic())
        self._take_chunks(rep, st, k)

    def _act(self, rep: EpisodeReport, st: _EpisodeState, k: int, now: float, obs: dict) -> None:
        """Send tick ``k``'s planned action through the safety filter (or count why nothing was sent)."""
        action = st.queue.action(k)
        if action is None:
            rep.holds["waiting_policy"] += 1
        else:
            decision = self.safety.filter(action, obs.get("proprio"), now)
            for ev in decision.events:
                rep.safety_events[ev] += 1
            if decision.action is None:
                rep.holds["rejected"] += 1
            elif self.robot.send_action(decision.action):
                rep.commands += 1
                rep.tick_compute.append(time.monotonic() - now)
                src = max((t for t in st.chunk_obs_time if t <= k), default=None)
                if src is not None:
                    rep.latencies.append(time.monotonic() - st.chunk_obs_time[src])
                if self.recorder is not None:
                    self.recorder.add_step(obs, decision.action)
            else:
                rep.holds["send_failed"] += 1
        for t in [t for t in st.chunk_obs_time if t < k - 64]:
            del st.chunk_obs_time[t]


def _starved_detail_text(status: str, bad_obs: str, missing: dict[str, str]) -> str:
    if status == "bad_obs":
        return f"observation does not fit the robot config: {bad_obs}"
    if missing:
        return "no message on " + ", ".join(f"{topic} ({key})" for key, topic in missing.items())
    return f"observations {status} (every input arrived, but too old or not yet complete)"


def loop_rate_summary(reps: list[EpisodeReport]) -> dict[str, float]:
    """Pool tick timing and latency over episodes (for the benchmark)."""
    periods = np.concatenate([np.diff(r.tick_times) for r in reps if len(r.tick_times) > 1] or [np.zeros(0)])
    lats = np.concatenate([np.asarray(r.latencies) for r in reps] or [np.zeros(0)])
    nan = float("nan")
    return {
        "rate_hz": float(1 / periods.mean()) if periods.size else nan,
        "jitter_ms": float(periods.std() * 1e3) if periods.size else nan,
        "late_ticks": int(sum(r.late_ticks for r in reps)),
        "latency_ms_p50": float(np.percentile(lats, 50) * 1e3) if lats.size else nan,
        "latency_ms_p99": float(np.percentile(lats, 99) * 1e3) if lats.size else nan,
        "n": int(lats.size),
    }
