"""Batched, seeded policy evaluation over a pool of env worker processes.

Control loop (one iteration = one control step for every active env):

1. envs whose current action chunk is used up ("need a chunk") are gathered, and the policy runs **one batched
   forward** (encoder + head, inside ``predict_action``) on exactly those rows: their (T_obs, ...) observation
   histories, on ``device``, under ``torch.inference_mode()`` (+ bf16 autocast on CUDA only; pinned, non-blocking
   host-to-device copies on CUDA only). So there is at most one forward per control step, and usually one per
   ``n_action_steps`` steps. For a policy with a frozen image encoder the image histories go in as tokens
   (``FrameTokenCache``): a frame already encoded by an earlier forward is not encoded again, so a policy that
   replans every step with ``n_obs_steps > 1`` encodes each frame once. Only rows that need a chunk are
   queried: re-planning envs that are mid-chunk would change what they execute, and would consume their random
   streams at times that depend on the batch, so an episode's outcome would depend on N.
2. Every active env executes the next action of its chunk; all step concurrently in their worker processes.
   How chunks are executed is ``policies.action_queue.ActionQueue``: the policy's own setting by default
   (``policy.temporal_ensemble``; the built-in BC and diffusion policies use ACT temporal ensembling: every env
   replans every step and executes the weighted mean of all chunks' predictions for that step, so there is a
   forward per step), whole chunks (``temporal_ensemble="off"``) or only the first ``replan_every`` actions.
3. Envs whose episode ended (success, ``terminated``, or the time limit) are recorded, then reset with the next
   unclaimed episode's seed so the batch stays full until all episodes are claimed.

Seeds: episode ``i`` resets its env with ``seed + i`` and samples the policy's noise from its own
``torch.Generator`` (seeded from ``(seed, i)``), passed as ``generators=`` per row. Episode ``i``'s result
therefore does not depend on which worker ran it, on N, or on what the other rows were doing.

Safety: a non-finite action (NaN/Inf) aborts that episode; an env exception, a worker process that dies or one
that hangs past ``step_timeout`` aborts the episode it was running (the worker is restarted). Each such
episode is recorded as a failure with a clear ``error`` message, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from s2robot.device import autocast_for, pin_if_cuda, resolve_device
from s2robot.encoders.history import FrameTokenCache, frozen_token_encoder
from s2robot.evaluation.metrics import summarize_episodes
from s2robot.evaluation.replay_video import EpisodeLog, low_dim, replay_videos, video_env_fn
from s2robot.evaluation.report import VideoRecorder, annotate_frame, frame_text, write_report
from s2robot.evaluation.env_pool import EnvPoolProtocol, EpisodeTally, StepResult
from s2robot.evaluation.vector_env import EnvPool, TaskEnvFactory
from s2robot.policies.action_queue import ActionQueue, execution_for

#: Evaluation episodes start at this seed unless one is given: far from the collection seeds (0, 1, ...), so an
#: evaluation start is never a training start. Used by ``s2robot eval`` (``seed: null``), the demo and training's
#: periodic rollouts (``seed + EVAL_SEED_OFFSET``).
EVAL_SEED_OFFSET = 100_000


def eval_seed(seed: int | None) -> int:
    """The first episode seed: ``seed`` as given, ``None`` -> :data:`EVAL_SEED_OFFSET`."""
    return EVAL_SEED_OFFSET if seed is None else int(seed)


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The CPU ``torch.Generator`` for episode ``episode``'s policy sampling (independent stream per episode)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(episode)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclasses.dataclass
class _Episode(EpisodeTally):
    """Bookkeeping of the episode a worker slot is running: its tally, sampling generator and start time."""

    generator: torch.Generator | None = None
    t_start: float = 0.0


class _Timers:
    def __init__(self):
        self.policy = 0.0  # main process: batch gather + transfer + forward + copy back
        self.env_wait = 0.0  # main process: waiting for workers' reset/step (includes IPC)
        self.env_inner = 0.0  # workers: time inside env.step/reset (summed over envs)
        self.env_parts: dict[str, float] = {}  # workers: info["timing"] split (e.g. physics, render), summed
        self.forwards = 0
        self.forward_rows = 0
        self.env_steps = 0

    def add_env(self, res: StepResult) -> None:
        self.env_inner += res.env_time
        for k, v in (res.timing or {}).items():
            self.env_parts[k] = self.env_parts.get(k, 0.0) + v


def _policy_obs_keys(policy, obs_spec: dict) -> list[str]:
    wanted = getattr(policy, "obs_keys", None)
    keys = list(obs_spec) if not wanted else [k for k in wanted if k in obs_spec]
    if wanted:
        missing = [k for k in wanted if k not in obs_spec]
        if missing:
            raise KeyError(f"policy needs observation keys {missing} that the env does not provide "
                           f"(env gives {sorted(obs_spec)})")
    return keys


def _warn_image_mismatch(policy, image_shapes: dict[str, tuple[int, ...]]) -> None:
    """Warn when the env renders images of another size than the policy was trained on (``shape_meta``)."""
    trained = getattr(getattr(policy, "shape_meta", None), "image_shape", None)
    if not trained:
        return
    wrong = {k: s for k, s in image_shapes.items() if tuple(s) != tuple(trained)}
    if wrong:
        warnings.warn(f"the env renders {wrong} but the policy was trained on {tuple(trained)} images; pass "
                      f"env_kwargs={{'image_size': {trained[0]}}} (evaluation.env_config.match_policy does this)",
                      stacklevel=3)


def _forward(policy, hist: dict[str, np.ndarray], rows: list[int], gens: list[torch.Generator],
             device: torch.device, token_cache: FrameTokenCache | None = None) -> np.ndarray:
    """One batched ``predict_action`` on ``rows`` of the history buffers -> float32 (len(rows), L, *A) on CPU.

    With ``token_cache`` the image histories go in as ``"<cam>_tokens"``: only frames no earlier forward encoded
    are encoded (the same tokens the policy would compute from the images).
    """
    batch = {}
    with torch.inference_mode(), autocast_for(device):
        if token_cache is not None:
            batch.update(token_cache.tokens({k: buf[rows] for k, buf in hist.items() if k.endswith("_image")}))
        for key, buf in hist.items():
            if key in batch or (token_cache is not None and key.endswith("_image")):
                continue
            t = torch.from_numpy(buf[rows])  # fancy indexing copies: (B, T_obs, ...)
            batch[key] = pin_if_cuda(t, device).to(device, non_blocking=device.type == "cuda")
        out = policy.predict_action(batch, generators=gens)
    return out.float().cpu().numpy()


class _BatchedRollout:
    """The control loop over an env pool (see the module docstring); ``run()`` fills ``records``."""

    def __init__(self, policy, pool: EnvPoolProtocol, device: torch.device, episodes: int, seed: int, limit: int,
                 video: VideoRecorder, bar, timers: _Timers, token_history: bool = True,
                 execution: tuple[int | None, float | None] = (None, None)):
        self.policy, self.pool, self.device = policy, pool, device
        self.episodes, self.seed, self.limit = episodes, seed, limit
        self.video, self.bar, self.timers = video, bar, timers
        n, n_obs = pool.n_envs, int(getattr(policy, "n_obs_steps", 1))
        keys = _policy_obs_keys(policy, pool.obs_spec)
        self.image_keys = [k for k in pool.obs_spec if k.endswith("_image")]
        # an env rendering no camera (a state-only policy): keep the video episodes' actions to replay them, filmed
        self.replay: dict[int, EpisodeLog] = {}
        if not self.image_keys:
            self.replay = {i: EpisodeLog() for i in sorted(video.wanted)}
            video.wanted = set()
        _warn_image_mismatch(policy, {k: pool.obs_spec[k][0] for k in self.image_keys})
        # per env: the last n_obs observations of every key the policy reads, (n_envs, n_obs, *shape)
        self.hist = {k: np.zeros((n, n_obs, *shape), dtype=np.dtype(dt))
                     for k, (shape, dt) in pool.obs_spec.items() if k in keys}
        encode = frozen_token_encoder(policy) if token_history else None
        n_image = sum(k.endswith("_image") for k in self.hist)
        # every frame the next forwards can reuse: n envs x n_obs steps x cameras, twice over
        self.token_cache = (FrameTokenCache(encode, capacity=max(1, 2 * n * n_obs * n_image), device=device)
                            if encode is not None and n_image else None)
        self.act_shape = pool.action_shape
        replan_every, ensemble_m = execution  # per env: the actions planned for its coming steps
        self.queues = [ActionQueue(ensemble_m, replan_every) for _ in range(n)]
        self.last_action: list[np.ndarray | None] = [None] * n  # what each env executed last (video overlay)
        self.slots: list[_Episode | None] = [None] * n
        self.records: list[dict[str, Any] | None] = [None] * episodes
        self.next_episode = 0
        self.n_success = 0

    # -- episode life cycle ----------------------------------------------------------------------------------------
    def finish(self, k: int, end: str, error: str | None = None) -> None:
        ep = self.slots[k]
        if ep.index in self.replay:  # the observation the episode ended on, which its replay must reach
            self.replay[ep.index].final_obs = low_dim(self.pool.obs, k)
        rec = ep.record(end, error)
        rec["wall_s"] = round(time.perf_counter() - ep.t_start, 4)
        self.records[ep.index] = rec
        self.n_success += int(rec["success"])
        self.video.finish(ep.index)
        self.slots[k] = None
        self.bar.update(1)
        self.bar.set_postfix_str(f"success {self.n_success}/{self.bar.n}")

    def _fail(self, k: int, message: str) -> None:
        """Abort slot ``k``'s episode with ``message``; restart its worker if the process is gone."""
        self.finish(k, "error", message)
        if not self.pool.alive(k):
            self.pool.restart(k)

    def _frame(self, k: int) -> np.ndarray:
        """Video frame of slot ``k``: labelled, enlarged views with step, last action and score overlaid."""
        ep = self.slots[k]
        action = self.last_action[k] if ep.length else None
        views = {key[: -len("_image")]: self.pool.obs[key][k] for key in self.image_keys}
        return annotate_frame(views, frame_text(ep.length, action, ep.max_score, ep.success))

    def refill(self) -> None:
        """Claim the next episodes for all free slots and reset their envs with those episodes' seeds."""
        while self.next_episode < self.episodes:
            free = [k for k, slot in enumerate(self.slots) if slot is None]
            if not free:
                return
            claimed = free[: self.episodes - self.next_episode]
            for k in claimed:
                i = self.next_episode
                self.slots[k] = _Episode(i, self.seed + i, generator=episode_generator(self.seed, i),
                                         t_start=time.perf_counter())
                self.next_episode += 1
            t0 = time.perf_counter()
            results = self.pool.reset(claimed, [self.slots[k].seed for k in claimed])
            self.timers.env_wait += time.perf_counter() - t0
            for k in claimed:
                res, ep = results[k], self.slots[k]
                self.timers.add_env(res)
                if not res.ok:
                    self._fail(k, f"reset(seed={ep.seed}) of episode {ep.index} failed: {res.error}")
                    continue
                ep.observe(res)
                for key, buf in self.hist.items():
                    buf[k] = self.pool.obs[key][k]  # pad the history by repeating the first observation
                self.queues[k].clear()
                self.last_action[k] = None
                if self.video.wants(ep.index):
                    self.video.add(ep.index, self._frame(k))

    # -- one control step ------------------------------------------------------------------------------------------
    def plan(self, need: list[int]) -> None:
        """One batched forward for the envs in ``need``; rows with non-finite actions abort their episode."""
        t0 = time.perf_counter()
        out = _forward(self.policy, self.hist, need, [self.slots[k].generator for k in need], self.device,
                       self.token_cache)
        self.timers.policy += time.perf_counter() - t0
        self.timers.forwards += 1
        self.timers.forward_rows += len(need)
        if out.ndim != 2 + len(self.act_shape) or out.shape[0] != len(need) or out.shape[2:] != self.act_shape:
            raise ValueError(f"policy.predict_action returned shape {tuple(out.shape)}; expected "
                             f"({len(need)}, n_action_steps, {', '.join(map(str, self.act_shape))})")
        finite = np.isfinite(out.reshape(len(need), -1)).all(axis=1)
        for row, k in enumerate(need):
            step = self.slots[k].length
            if finite[row]:
                self.queues[k].add(step, out[row], step)
            else:
                self.finish(k, "error", f"policy returned a non-finite action (NaN/Inf) at step {step} "
                                        f"of episode {self.slots[k].index}; episode aborted")

    def act(self, active: list[int]) -> None:
        """Step every env in ``active`` with its planned action for this step; record episodes that end."""
        for k in active:
            self.last_action[k] = self.queues[k].action(self.slots[k].length)
            if self.slots[k].index in self.replay:
                self.replay[self.slots[k].index].actions.append(np.array(self.last_action[k]))
        actions = np.stack([self.last_action[k] for k in active])
        t0 = time.perf_counter()
        results = self.pool.step(active, actions)
        self.timers.env_wait += time.perf_counter() - t0
        stepped = []
        for k in active:
            res, ep = results[k], self.slots[k]
            self.timers.add_env(res)
            if not res.ok:
                self._fail(k, f"step {ep.length} of episode {ep.index} failed: {res.error}")
                continue
            self.timers.env_steps += 1
            ep.length += 1
            ep.observe(res)
            stepped.append(k)
        if stepped:
            for key, buf in self.hist.items():  # roll the stepped envs' histories by one, batched
                buf[stepped, :-1] = buf[stepped, 1:]
                buf[stepped, -1] = self.pool.obs[key][stepped]
        for k in stepped:
            ep = self.slots[k]
            if self.video.wants(ep.index):
                self.video.add(ep.index, self._frame(k))
            if ep.success:
                self.finish(k, "success")
            elif results[k].terminated:
                self.finish(k, "terminated")
            elif results[k].truncated or ep.length >= self.limit:
                self.finish(k, "time_limit")

    def step(self) -> None:
        active = [k for k, slot in enumerate(self.slots) if slot is not None]
        need = [k for k in active if self.queues[k].wants_chunk(self.slots[k].length)]
        if need:
            self.plan(need)
            active = [k for k in active if self.slots[k] is not None]
        if active:
            self.act(active)
        self.refill()

    def busy(self) -> bool:
        return any(slot is not None for slot in self.slots)


def _policy_for_eval(policy, device: torch.device) -> bool:
    """Move ``policy`` to ``device``, put it in eval mode and reset its history; returns whether it was training."""
    was_training = bool(getattr(policy, "training", False))
    if hasattr(policy, "to"):
        policy.to(device)
    if hasattr(policy, "eval"):
        policy.eval()
    if hasattr(policy, "reset"):
        policy.reset()
    return was_training


def _open_pool(backend: str, task: str | None, env_fn: Callable | None, n_envs: int, device: torch.device,
               env_kwargs: dict | None, step_timeout: float | None):
    """The env pool of ``backend``: "warp" (worlds of one MuJoCo-Warp model on ``device``) or "cpu" (``env_fn`` in
    spawned worker processes)."""
    if backend == "warp":
        from s2robot.evaluation.warp_pool import WarpEnvPool  # optional extra (mujoco-warp): imported on use

        return WarpEnvPool(task, n_envs, device=device, **dict(env_kwargs or {}))
    return EnvPool(env_fn, n_envs, step_timeout=step_timeout)


def _limit_and_video(pool, max_steps: int | None, out_dir: str | Path | None, n_videos: int, episodes: int,
                     fps: float | None) -> tuple[int, VideoRecorder]:
    """The episode time limit (``max_steps``, else the env's ``max_episode_steps``) and the recorder of the first
    ``n_videos`` episodes (an env without images has them replayed afterwards, see :func:`_replay_videos`)."""
    limit = max_steps if max_steps is not None else pool.max_episode_steps
    if limit is None:
        raise ValueError("the env has no time limit (max_episode_steps); pass max_steps=")
    video = VideoRecorder(None if out_dir is None else Path(out_dir) / "videos", range(min(n_videos, episodes)),
                          fps or pool.fps or 10.0)
    return int(limit), video


def _close(policy, was_training: bool, *parts) -> None:
    """Close the video recorder, progress bar and env pool (those that were opened); restore training mode."""
    for part in parts:
        if part is not None:
            part.close()
    if was_training and hasattr(policy, "train"):
        policy.train()


def evaluate(policy, task: str | None = None, n_envs: int = 4, episodes: int = 20, seed: int = 0,
             device: str | torch.device = "auto", out_dir: str | Path | None = None, n_videos: int = 2,
             env_kwargs: dict | None = None, backend: str = "cpu", env_fn: Callable | None = None,
             max_steps: int | None = None, progress: bool = True, step_timeout: float | None = 300.0,
             fps: float | None = None, policy_info: dict[str, Any] | None = None,
             token_history: bool = True, replan_every: int | None = None,
             temporal_ensemble: float | str | None = None,
             video_cameras: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``episodes`` seeded episodes of ``policy`` on ``n_envs`` parallel envs; return the summary dict.

    Args:
        policy: has ``predict_action(obs, generators=None)`` with obs ``{key: (B, T_obs, ...)}`` tensors returning
            (B, n_action_steps, A), plus ``n_obs_steps`` (and optionally ``reset()``, ``obs_keys``).
        task: a registered s2robot task name (``s2robot.envs.make_env(task, **env_kwargs)``); with ``env_fn`` it
            only names the run.
        n_envs: worker processes (capped at ``episodes``).
        episodes: number of episodes; episode ``i`` uses env seed ``seed + i``.
        device: where the policy runs ("auto": cuda if present). The policy is moved there.
        out_dir: if given, ``episodes.json``, ``summary.json``, ``eval_plot.png`` and ``videos/episode_<i>.mp4``
            for the first ``n_videos`` episodes are written there.
        backend: physics backend: "cpu" (MuJoCo in spawn worker processes) or "warp" (all envs as worlds of one
            MuJoCo-Warp model on ``device``; built-in tasks only, needs the ``warp`` extra).
        env_fn: a picklable zero-argument env factory overriding ``task`` (tests, custom envs).
        max_steps: episode time limit; default the env's own ``max_episode_steps``.
        step_timeout: seconds a worker may take for one reset/step before it is killed as hung.
        fps: video frame rate; default the env's ``metadata["render_fps"]`` or 10.
        policy_info: where the policy comes from, recorded as ``summary["policy"]`` and named in the plot:
            ``{"checkpoint": path or None, "step": int, "trained_task": name}``.
        token_history: for a policy with a frozen image encoder, keep the tokens of history frames
            (:class:`s2robot.encoders.history.FrameTokenCache`) so each frame is encoded once, also when the policy
            replans every step with ``n_obs_steps > 1``; False re-encodes every frame of the window in every
            forward (the same tokens, more encoder calls).
        replan_every: execute only the first k actions of each chunk, then replan (None: the whole chunk).
        temporal_ensemble: None: the policy's own setting (its ``temporal_ensemble`` attribute, from its config);
            ``"off"``: whole chunks; m >= 0: ACT temporal ensembling. Every env replans every step and
            executes ``sum_i w_i a_i / sum_i w_i`` over the chunks covering the step, ``w_i = exp(-m i)``, i = 0 the
            oldest (with ``replan_every=k`` only each chunk's first k actions take part).
        video_cameras: a policy whose env renders no camera (state only) gets its video episodes replayed in an
            env rendering these (default ``("front",)``; built-in tasks; :mod:`s2robot.evaluation.replay_video`).

    Returns: the summary (success rate, 95% Wilson interval, mean max score, lengths, env-steps/s, timings,
        ``all_errored``: True when every episode was aborted by an error, paths of written files) plus
        ``episodes``: the per-episode records (also in ``episodes.json``; not repeated in ``summary.json``).
    """
    env_fn = _check_args(episodes, n_envs, backend, task, env_fn, env_kwargs)
    execution = {"replan_every": replan_every, "temporal_ensemble": execution_for(policy, temporal_ensemble),
                 "n_action_steps": getattr(policy, "n_action_steps", None)}  # what summary["execution"] records
    ActionQueue(execution["temporal_ensemble"], replan_every)  # refuses bad values before any worker starts
    task_name = task or getattr(env_fn, "__name__", type(env_fn).__name__)
    dev = resolve_device(device)
    n_envs = min(int(n_envs), int(episodes))
    was_training = _policy_for_eval(policy, dev)

    t_begin = time.perf_counter()
    timers = _Timers()
    pool = video = bar = None
    try:
        pool = _open_pool(backend, task, env_fn, n_envs, dev, env_kwargs, step_timeout)
        limit, video = _limit_and_video(pool, max_steps, out_dir, n_videos, episodes, fps)
        bar = tqdm(total=episodes, desc=f"eval {task_name}", unit="ep", disable=not progress, dynamic_ncols=True)
        loop = _BatchedRollout(policy, pool, dev, episodes, seed, int(limit), video, bar, timers, token_history,
                               (replan_every, execution["temporal_ensemble"]))
        loop.refill()
        t_started = time.perf_counter()  # startup = workers + first resets (GL contexts are created there)
        timers.env_wait, timers.env_inner, timers.env_parts = 0.0, 0.0, {}  # timings below: steady state only
        while loop.busy():
            loop.step()
        t_loop_end = time.perf_counter()
    finally:
        _close(policy, was_training, video, bar, pool)
    replayed = _replay_videos(loop, env_fn, video, video_cameras, step_timeout)  # {} or {"replay_mismatch": [...]}
    summary = {"task": task_name, "policy": dict(policy_info or {}), "n_envs": n_envs, "seed": seed,
               "device": str(dev), "max_steps": int(limit), "execution": execution,
               **summarize_episodes(loop.records), **replayed}
    summary["all_errored"] = summary["n_errors"] == len(loop.records)
    summary.update(_run_stats(loop, timers, pool, video, (t_begin, t_started, t_loop_end)))
    if out_dir is not None:
        summary["files"].update(write_report(out_dir, loop.records, summary))
    summary["episodes"] = loop.records
    return summary


def _replay_videos(loop: "_BatchedRollout", env_fn: Callable, video: VideoRecorder,
                   cameras: Sequence[str] | None, step_timeout: float | None) -> dict[str, list[int]]:
    """Film the video episodes of a policy whose env rendered no camera by replaying them; returns
    ``{"replay_mismatch": [episodes whose replay differed, with a warning]}``, or {} when nothing was replayed."""
    episodes = {i: log for i, log in loop.replay.items()
                if loop.records[i] is not None and loop.records[i]["error"] is None}
    filmed = video_env_fn(env_fn, cameras)
    if not episodes or filmed is None or video.folder is None:
        return {}
    video.wanted = set(episodes)
    mismatch = replay_videos(filmed, episodes, loop.records, video, step_timeout)
    if mismatch:
        warnings.warn(f"the replayed videos of episodes {mismatch} differ from the evaluated episodes (the env is "
                      "not deterministic for a seed and actions); those videos do not show what was evaluated",
                      stacklevel=3)
    return {"replay_mismatch": mismatch}


def _check_args(episodes: int, n_envs: int, backend: str, task: str | None, env_fn: Callable | None,
                env_kwargs: dict | None) -> Callable:
    """Refuse bad arguments of :func:`evaluate` with one clear line; returns the env factory to use."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if backend not in ("cpu", "warp"):
        raise ValueError(f"backend={backend!r}: choose 'cpu' (MuJoCo in worker processes) or 'warp' (MuJoCo-Warp)")
    if backend == "warp" and (env_fn is not None or not task):
        raise ValueError("backend='warp' runs the built-in tasks only: pass task=<name>, not env_fn")
    if env_fn is None:
        if not task:
            raise ValueError("evaluate needs a task name or an env_fn")
        env_fn = TaskEnvFactory(task, dict(env_kwargs or {}))
    return env_fn


def _run_stats(loop: "_BatchedRollout", timers: "_Timers", pool: EnvPoolProtocol, video: VideoRecorder,
               times: tuple[float, float, float]) -> dict[str, Any]:
    """The summary's run statistics: env-steps/s (steady state), forwards, timings, video files."""
    t_begin, t_started, t_loop_end = times
    loop_wall = t_loop_end - t_started  # steady state: without worker start-up, first resets and shutdown
    return {
        "env_steps": timers.env_steps,
        "wall_s": round(time.perf_counter() - t_begin, 3),
        "env_steps_per_s": timers.env_steps / loop_wall if loop_wall > 0 else 0.0,
        "policy_forwards": timers.forwards,
        "frames_encoded": None if loop.token_cache is None else loop.token_cache.frames_encoded,
        "mean_forward_batch": timers.forward_rows / max(1, timers.forwards),
        "worker_restarts": pool.restarts,
        "time_s": {"startup": round(t_started - t_begin, 3), "loop": round(loop_wall, 3),
                   "policy": round(timers.policy, 3), "env_wait": round(timers.env_wait, 3),
                   "env_inside_workers": round(timers.env_inner, 3),
                   **{f"env_{k}": round(v, 3) for k, v in sorted(timers.env_parts.items())}},
        "files": {"videos": [video.paths[i] for i in sorted(video.paths)]},
        "video_fps": video.fps,
    }
