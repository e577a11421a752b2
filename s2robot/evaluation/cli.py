"""``s2robot eval checkpoint=PATH [task=<task>] n_envs=N episodes=M ...`` (``configs/eval.yaml``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from s2robot.device import resolve_device
from s2robot.evaluation.env_config import env_kwargs_for, match_policy
from s2robot.evaluation.rollout import eval_seed, evaluate
from s2robot.policies.diffusion import set_action_steps, set_compiled_denoiser, set_inference_steps
from s2robot.policies.loading import STATE_FILE, load_policy, read_config, resolve_checkpoint, set_inference_engine


def exit_code(summary: dict[str, Any]) -> int:
    """Non-zero only when every episode was aborted by an error (NaN action, env exception, dead worker)."""
    return 1 if summary.get("all_errored") else 0


def print_summary(summary: dict[str, Any]) -> None:
    lo, hi = summary["success_ci95"]
    score = summary.get("mean_max_score")
    print(f"[eval] {summary['task']}: success {summary['n_success']}/{summary['n_episodes']} = "
          f"{100 * summary['success_rate']:.1f}% (95% Wilson CI {100 * lo:.1f}-{100 * hi:.1f}%)"
          + (f", mean max score {score:.3f}" if score is not None else "")
          + f", mean length {summary['mean_length']:.1f}, {summary['env_steps_per_s']:.1f} env-steps/s "
          f"on {summary['n_envs']} envs ({summary['device']})")
    if summary["n_errors"]:
        print(f"[eval] {summary['n_errors']} episode(s) aborted by errors; see episodes.json")
    files = summary.get("files", {})
    for key in ("summary", "episodes", "plot"):
        if files.get(key):
            print(f"[eval] {key}: {files[key]}")
    for v in files.get("videos", []):
        print(f"[eval] video: {v}")


def checkpoint_info(ckpt) -> dict[str, Any]:
    """``{"checkpoint", "step", "trained_task", "trained_on"}`` of a checkpoint directory (config.yaml, state.json)."""
    cfg = OmegaConf.to_container(read_config(ckpt), resolve=True)
    state_file = Path(ckpt) / STATE_FILE
    step = json.loads(state_file.read_text()).get("step") if state_file.is_file() else None
    return {"checkpoint": str(ckpt), "step": step, "trained_task": (cfg.get("task") or {}).get("name"),
            "trained_on": (cfg.get("dataset") or {}).get("path")}


def task_mismatch(info: dict[str, Any], task: str) -> str | None:
    """A warning when the checkpoint was trained on another task than the one it is evaluated on."""
    trained = info.get("trained_task")
    if trained and trained != task:
        return (f"[eval] warning: the checkpoint was trained on {trained!r} but is evaluated on {task!r} (task={task}); "
                f"its success rate says nothing about {trained!r}")
    return None


def run(cfg) -> int:
    """CLI verb: load the checkpoint's policy, evaluate it, print the summary and where the files are."""
    if not cfg.get("checkpoint"):
        raise SystemExit("s2robot eval: checkpoint=PATH is required (a checkpoint directory or a training run)")
    try:
        ckpt = resolve_checkpoint(str(cfg.checkpoint))
    except FileNotFoundError as e:
        raise SystemExit(f"s2robot eval: {e}") from None
    task_cfg = cfg.get("task")
    if task_cfg is None:
        task_cfg = read_config(ckpt).get("task")
    task_cfg = OmegaConf.to_container(task_cfg, resolve=True) if task_cfg is not None else None
    if not task_cfg or not task_cfg.get("name"):
        raise SystemExit("s2robot eval: no task given and the checkpoint's config.yaml names none; pass task=<name>")
    explicit = OmegaConf.to_container(cfg.get("env_kwargs") or OmegaConf.create({}), resolve=True)
    device = resolve_device(cfg.device)  # configs/eval.yaml holds every key
    policy = load_policy(ckpt, device=str(device))
    try:
        set_inference_steps(policy, cfg.get("num_inference_steps"))
        set_action_steps(policy, cfg.get("n_action_steps"))
        set_compiled_denoiser(policy, cfg.compile_denoiser)
        engines = set_inference_engine(policy, cfg.get("engine"))
    except ValueError as e:
        raise SystemExit(f"s2robot eval: {e}") from None
    env_kwargs = {**match_policy(env_kwargs_for(task_cfg), policy, explicit), **explicit}
    info = checkpoint_info(ckpt)
    if hasattr(policy, "num_inference_steps"):
        info["num_inference_steps"] = policy.num_inference_steps
    info.update(engines)  # encoder_engine, denoiser_engine: what computed this evaluation
    warning = task_mismatch(info, task_cfg["name"])
    if warning:
        print(warning, file=sys.stderr)
    out = cfg.get("out") or str(ckpt.parent.parent / f"eval_{task_cfg['name']}_{ckpt.name}")
    summary = evaluate(policy, task=task_cfg["name"], n_envs=int(cfg.n_envs), episodes=int(cfg.episodes),
                       seed=eval_seed(cfg.get("seed")), device=device, out_dir=out, n_videos=int(cfg.n_videos),
                       env_kwargs=env_kwargs, backend=str(cfg.get("backend", "cpu")),
                       max_steps=cfg.get("max_steps") or task_cfg.get("max_episode_steps"), policy_info=info,
                       replan_every=cfg.get("replan_every"), temporal_ensemble=cfg.get("temporal_ensemble"),
                       video_cameras=task_cfg.get("cameras") or None)
    print_summary(summary)
    return exit_code(summary)
