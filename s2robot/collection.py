"""``s2robot collect task=<name> episodes=N out=PATH``: record scripted-expert demos into an ``EpisodeStore``.

Per step ``t`` an episode holds the observation ``o_t`` (``<cam>_image`` uint8 (H, W, 3), ``proprio`` (P,)), the
action ``a_t`` taken from it (A,), then ``reward`` / ``success`` observed after ``a_t``, the simulator state at
``o_t`` (``sim_state``, layout in the store attrs) and the env seed of the episode (``episode_seed``, int64).

Perturbed demonstrations (``action_noise``, DART: Laskey et al. 2017): the env executes the expert's action plus
Gaussian noise on the motion components (std = ``action_noise`` x the per-step limit) while ``action`` stores the
expert's clean action, its label for that observation. The closed-loop expert then corrects the drift, so the
demos show how to recover from the small errors a learned policy makes (and, after a slipped grasp, the expert's
retry), which plain BC never sees in noise-free demos. ``executed_action`` holds what was applied.

Crash safety and resume: each finished episode is appended (data first, end last) before the next one starts, so
an interrupted run keeps every finished episode. Attempt ``k`` uses env/expert seed ``seed + k``; a rerun with the
same ``out`` reopens the store, counts its episodes and continues after the last recorded ``episode_seed`` until
``episodes`` are stored, so an interrupted-then-resumed collection equals an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from s2robot.datasets.store import EpisodeStore
from s2robot.envs import make_env, robot
from s2robot.envs.experts import make_expert


class ExpertShortfallError(ValueError):
    """The expert succeeded too rarely to store ``episodes`` within ``max_attempts``: a setting (attempt budget,
    ``action_noise``), not a bug. The episodes stored so far stay in the store; the same command resumes."""


def checked_action_noise(value) -> float:
    """``action_noise`` as a float >= 0, or one ValueError naming it (before anything is created or opened)."""
    try:
        noise = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"action_noise must be a number >= 0, got {value!r}") from None
    if not noise >= 0:  # also NaN
        raise ValueError(f"action_noise must be a number >= 0, got {value!r}")
    return noise


def motion_noise(env, action_noise: float, seed: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """``perturb(action) -> executed action`` adding N(0, (action_noise * limit)²) to dx, dy, dz (limit
    ``max_delta``) and dyaw (``max_dyaw``) of this package's arm; None when ``action_noise`` is 0.
    ``action_noise`` is a value :func:`checked_action_noise` passed (``collect`` checks it once, up front)."""
    if action_noise == 0:
        return None
    base = env.unwrapped
    scale = action_noise * np.array([base.max_delta] * 3 + [base.max_dyaw, 0.0], dtype=np.float32)
    rng = np.random.default_rng([int(seed), 0xDA27])

    def perturb(action: np.ndarray) -> np.ndarray:
        return (action + rng.normal(size=action.shape).astype(np.float32) * scale).astype(np.float32)

    return perturb


def record_episode(env, act: Callable[[dict], np.ndarray], seed: int, max_steps: int | None = None,
                   record_sim_state: bool = True,
                   perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Roll out ``act`` in ``env`` from ``reset(seed)``; return ({key: (T, ...) array}, success).

    Works for any env returning the observation dict and ``info["success"]`` (e.g. ``adapter.ImageEnvAdapter``);
    ``sim_state`` is recorded when ``env.unwrapped`` has ``get_sim_state``. ``perturb``: the env executes
    ``perturb(action)`` while ``action`` is recorded as the label (``executed_action`` too); see the module doc.
    """
    base = env.unwrapped
    has_state = record_sim_state and hasattr(base, "get_sim_state")
    obs, info = env.reset(seed=seed)
    steps: dict[str, list] = {k: [] for k in obs}
    steps.update(action=[], reward=[], success=[])
    if perturb is not None:
        steps["executed_action"] = []
    if has_state:
        steps["sim_state"] = []
    success, t = False, 0
    while True:
        if has_state:
            steps["sim_state"].append(base.get_sim_state())
        action = np.asarray(act(obs), dtype=np.float32)
        for k, v in obs.items():
            steps[k].append(v)
        executed = action if perturb is None else perturb(action)
        obs, reward, terminated, truncated, info = env.step(executed)
        steps["action"].append(action)
        if perturb is not None:
            steps["executed_action"].append(executed)
        steps["reward"].append(np.float32(reward))
        success = bool(info.get("success", False))
        steps["success"].append(success)
        t += 1
        if terminated or truncated or (max_steps is not None and t >= max_steps):
            break
    episode = {k: np.stack(v) for k, v in steps.items()}
    episode["proprio"] = episode["proprio"].astype(np.float32)
    episode["episode_seed"] = np.full(t, seed, dtype=np.int64)
    return episode, success


def store_attrs(task_cfg: dict, env, image_size, cameras, seed: int, action_noise: float = 0.0) -> dict[str, Any]:
    """JSON attrs describing how the demos were made (docs/INTERFACES.md: task, env_kwargs, fps, cameras, action_space)."""
    base = env.unwrapped
    low, high = env.action_space.low, env.action_space.high
    return {
        "task": task_cfg["name"],
        "env_id": env.spec.id,  # from the task registry (envs/tasks.py), not the config
        "env_kwargs": {**dict(task_cfg.get("env_kwargs") or {}), "image_size": image_size, "cameras": list(cameras)},
        "fps": float(env.metadata["render_fps"]),  # the env's control rate (e.g. task.env_kwargs.control_hz)
        "cameras": list(cameras),
        "action_space": {"low": low.tolist(), "high": high.tolist(),
                         "layout": list(getattr(base, "action_layout", ["dx", "dy", "dz", "dyaw", "gripper"]))},
        "proprio_layout": list(getattr(base, "proprio_layout", ["ee_x", "ee_y", "ee_z", "gripper_width",
                                                                 *robot.ARM_JOINTS])),
        "sim_state_layout": dict(base.sim_state_layout),
        "collect": {"seed": int(seed), "source": "scripted_expert", "max_episode_steps": int(env.spec.max_episode_steps),
                    "action_noise": float(action_noise)},
    }


def _resume_point(store, seed: int) -> int:
    """Next attempt index: one after the last recorded episode's seed (0 for an empty store)."""
    if store.n_episodes == 0:
        return 0
    last = int(store.array("episode_seed")[store.n_steps - 1])
    return last - seed + 1


def collect(task_cfg: dict, episodes: int, out: str | os.PathLike, seed: int = 0, only_success: bool = True,
            image_size: int | None = None, cameras=None, max_attempts: int | None = None, overwrite: bool = False,
            record_sim_state: bool = True, progress: bool = True, action_noise: float | None = None) -> dict[str, Any]:
    """Record ``episodes`` expert demos of ``task_cfg`` (a ``configs/task/*.yaml`` dict) into the store at ``out``.

    ``image_size``, ``cameras`` and ``action_noise`` default (None) to the task config's ``image_size``, ``cameras``
    and ``demo_action_noise`` (absent: 0, plain demos).

    Returns a summary dict (path, episodes, steps, attempts, success_rate).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    name = task_cfg["name"]
    image_size = int(image_size or task_cfg.get("image_size", 224))
    cameras = tuple(cameras or task_cfg.get("cameras", ("front", "wrist")))
    max_attempts = int(max_attempts or 3 * episodes + 10)
    action_noise = checked_action_noise((task_cfg.get("demo_action_noise") or 0.0) if action_noise is None
                                        else action_noise)
    env_kwargs = dict(task_cfg.get("env_kwargs") or {})
    # task.max_episode_steps: None (the shipped configs) keeps the registry's limit, a number overrides it
    env = make_env(name, image_size=image_size, cameras=cameras,
                   max_episode_steps=task_cfg.get("max_episode_steps"), **env_kwargs)
    attrs = store_attrs(task_cfg, env, image_size, cameras, seed, action_noise)
    out_path = Path(out)
    try:
        if out_path.exists() and not overwrite:
            store = EpisodeStore.open(out_path, mode="a")
            old = store.attrs
            for key in ("task", "env_kwargs", "cameras"):
                if old.get(key) != attrs[key]:
                    raise ValueError(f"{out_path} holds a different collection ({key}={old.get(key)!r}, "
                                     f"requested {attrs[key]!r}); choose another out= or overwrite=true")
            if float(old.get("collect", {}).get("action_noise", 0.0)) != float(action_noise):
                raise ValueError(f"{out_path} was collected with action_noise="
                                 f"{old.get('collect', {}).get('action_noise', 0.0)}, requested {action_noise}; "
                                 "resume with the same action_noise or choose another out=")
            if old.get("collect", {}).get("seed") != seed:
                raise ValueError(f"{out_path} was collected with seed={old.get('collect', {}).get('seed')}, "
                                 f"requested seed={seed}; resume with the same seed or choose another out=")
        else:
            store = EpisodeStore.create(out_path, attrs=attrs, overwrite=overwrite)
        attempt = _resume_point(store, seed)
        done0 = store.n_episodes
        tried = ok = 0
        bar = tqdm(total=episodes, initial=min(done0, episodes), desc=f"collect {name}", unit="ep",
                   disable=not progress)
        while store.n_episodes < episodes:
            if tried >= max_attempts:
                bar.close()  # its line ends before the error's
                noise = f" with action_noise={action_noise:g}" if action_noise else ""
                raise ExpertShortfallError(
                    f"only {store.n_episodes}/{episodes} {name} episodes stored after {tried} attempts (expert "
                    f"success {ok}/{tried}{noise}); they are kept in {out_path}: rerun with a larger max_attempts"
                    + (" or a smaller action_noise" if action_noise else "") + " to continue")
            ep_seed = seed + attempt
            expert = make_expert(name, env, seed=ep_seed)
            episode, success = record_episode(env, expert.act, ep_seed, record_sim_state=record_sim_state,
                                              perturb=motion_noise(env, action_noise, ep_seed))
            attempt += 1
            tried += 1
            ok += success
            if success or not only_success:
                store.append_episode(episode)
                bar.update(1)
            bar.set_postfix(success=f"{ok}/{tried}")
        bar.close()
        summary = {"path": str(out_path), "episodes": store.n_episodes, "steps": store.n_steps,
                   "new_episodes": store.n_episodes - done0, "attempts": tried,
                   "success_rate": ok / tried if tried else float("nan")}
        store.close()
        return summary
    finally:
        env.close()


def run(cfg) -> int:
    """CLI verb ``s2robot collect`` (``configs/collect.yaml``, which holds every key: no defaults here)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    summary = collect(c["task"], episodes=int(c["episodes"]), out=c["out"], seed=int(c["seed"]),
                      only_success=bool(c["only_success"]), image_size=c["image_size"], cameras=c["cameras"],
                      max_attempts=c["max_attempts"], overwrite=bool(c["overwrite"]),
                      record_sim_state=bool(c["record_sim_state"]), action_noise=c["action_noise"])
    print(f"collect: {summary['episodes']} episodes ({summary['steps']} steps, {summary['new_episodes']} new, "
          f"expert success {summary['success_rate']:.2f}) in {summary['path']}")
    return 0
