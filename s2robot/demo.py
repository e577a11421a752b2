"""``s2robot demo out=DIR``: the main job. Collect scripted demos → cache S2 features → train a policy (BC-MLP by
default) → evaluate it with batched rollouts, then print the success rate and where the video, plot and checkpoint are.

Every stage calls the owning part's Python API with a config composed from that verb's own YAML
(``configs/<verb>.yaml``), with the demo's task / encoder / policy sections and its ``stages.<verb>`` overrides
(``configs/demo.yaml``) merged over it, so ``s2robot demo stages.train.train.steps=20000`` scales a stage the same
way ``s2robot train train.steps=20000`` would. Each stage is skipped when its output already exists, and the
collection, cache and training stages resume from where an interrupted run stopped::

    <out>/demos.zarr                      collected demonstrations (+ features/<encoder hash> after caching)
    <out>/train/checkpoints/step_*/       policy checkpoints (model.safetensors, config.yaml, state.json)
    <out>/eval/                           summary.json, episodes.json, eval_plot.png, videos/episode_*.mp4
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from s2robot.cli import compose
from s2robot.datasets.feature_cache import cache_features
from s2robot.datasets.store import EpisodeStore
from s2robot.device import resolve_device
from s2robot.encoders import build_encoder
from s2robot.evaluation.cli import checkpoint_info, print_summary
from s2robot.evaluation.env_config import env_kwargs_for, match_policy
from s2robot.evaluation.rollout import eval_seed, evaluate
from s2robot.policies.loading import load_policy
from s2robot.training.train import train


def _stage_cfg(cfg: DictConfig, verb: str, overrides: list[str] | None = None) -> DictConfig:
    """``configs/<verb>.yaml`` with the demo's task/encoder/policy sections and ``stages.<verb>`` merged over it."""
    stage = compose(verb, overrides or [])
    with open_dict(stage):
        for group in ("task", "encoder", "policy"):
            if group in stage and group in cfg:
                stage[group] = OmegaConf.to_container(cfg[group], resolve=True)
        extra = cfg.get("stages", {}).get(verb)
        if extra:
            stage.merge_with(OmegaConf.to_container(extra, resolve=True))
    return stage


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _collect_in_child(task_cfg: dict, kwargs: dict) -> None:
    """Body of the collection process (spawned): MuJoCo and its GL context live and die here."""
    # Imported here, in the child only: the demo process itself never loads MuJoCo / Mesa (see collect_stage).
    from s2robot.collection import collect

    summary = collect(task_cfg, **kwargs)
    _say(f"    {summary['episodes']} episodes, {summary['steps']} steps (expert success "
         f"{summary['success_rate']:.2f})")


def collect_stage(cfg: DictConfig, store: Path) -> None:
    """Record expert demos in a spawned process.

    Rendering with Mesa (EGL or OSMesa, both llvmpipe/LLVM) in this process and importing torch's triton later
    (torchvision, torch._dynamo) crashes with a segfault (two LLVMs in one process), so this process never
    renders: collection runs in a child, evaluation in env workers.
    """
    c = _stage_cfg(cfg, "collect")
    want = int(c.episodes)
    if store.exists():
        s = EpisodeStore.open(store, mode="r")
        have = s.n_episodes
        s.close()
        if have >= want:
            _say(f"1/4 collect: skipped, {store} already holds {have} episodes")
            return
    t0 = time.perf_counter()
    _say(f"1/4 collect: {want} scripted {c.task.name} demos at {c.task.image_size} px -> {store}")
    kwargs = dict(episodes=want, out=str(store), seed=int(c.seed), only_success=bool(c.only_success),
                  image_size=c.get("image_size"), cameras=list(c.cameras) if c.get("cameras") else None,
                  max_attempts=c.max_attempts, record_sim_state=bool(c.record_sim_state),
                  action_noise=c.action_noise)  # c: configs/collect.yaml + stages.collect, every key
    proc = mp.get_context("spawn").Process(target=_collect_in_child, name="s2robot-collect",
                                           args=(OmegaConf.to_container(c.task, resolve=True), kwargs))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"demo: the collection stage failed (process exit code {proc.exitcode}); see above. "
                           f"Re-running resumes from the episodes already stored in {store}")
    _say(f"    collected in {time.perf_counter() - t0:.0f}s")


def cache_stage(cfg: DictConfig, store: Path, device: str) -> str:
    c = _stage_cfg(cfg, "cache", [f"dataset.path={store}"])
    t0 = time.perf_counter()
    encoder = build_encoder(**OmegaConf.to_container(c.encoder, resolve=True), device=device)
    views = int(c.augment_views)
    _say(f"2/4 cache: S2 {c.encoder.name} scales {list(encoder.config['scales'])} features "
         f"({encoder.num_tokens} tokens x {encoder.out_dim}) for every frame"
         + (f", {views} views each (the frame + {views - 1} random shifts)" if views > 1 else "")
         + " (finished frames are skipped)")
    key = cache_features(store, encoder, cameras=list(c.cameras) if c.get("cameras") else None,
                         batch_size=int(c.batch_size), pool_grid=c.get("pool_grid"), device=device,
                         token_dim=c.get("token_dim"),  # PCA channel reduction: ~10x faster training
                         augment_views=views, augment_shift=c.augment_shift, augment_seed=int(c.augment_seed))
    _say(f"    features/{key} ready in {time.perf_counter() - t0:.0f}s")
    return key


def train_stage(cfg: DictConfig, store: Path, run_dir: Path, device: str) -> Path:
    c = _stage_cfg(cfg, "train", [f"dataset.path={store}"])
    with open_dict(c):
        c.out_dir = str(run_dir)
        c.device = device
        c.resume = True  # continue an interrupted run from its latest checkpoint
        c.seed = int(cfg.seed)
    final = run_dir / "checkpoints" / f"step_{int(c.train.steps):07d}"
    if (final / "model.safetensors").is_file():
        _say(f"3/4 train: skipped, {final} exists")
        return final
    t0 = time.perf_counter()
    _say(f"3/4 train: {c.policy.name} for {c.train.steps} steps (batch {c.train.batch_size}) on cached features "
         f"-> {run_dir}")
    final = Path(train(c))
    _say(f"    trained in {time.perf_counter() - t0:.0f}s")
    return final


def eval_stage(cfg: DictConfig, checkpoint: Path, eval_dir: Path, device: str) -> dict[str, Any]:
    summary_path = eval_dir / "summary.json"
    model = checkpoint / "model.safetensors"
    if summary_path.is_file() and summary_path.stat().st_mtime >= model.stat().st_mtime:
        summary = json.loads(summary_path.read_text())
        if summary.get("checkpoint") == str(checkpoint):
            _say(f"4/4 eval: skipped, {summary_path} is newer than the checkpoint")
            return summary
    c = _stage_cfg(cfg, "eval", [f"checkpoint={checkpoint}"])
    task = OmegaConf.to_container(cfg.task, resolve=True)
    _say(f"4/4 eval: {c.episodes} seeded episodes on {c.n_envs} envs (one batched policy forward per step)")
    policy = load_policy(checkpoint, device=device)
    summary = evaluate(policy, task=task["name"], n_envs=int(c.n_envs), episodes=int(c.episodes), seed=eval_seed(c.get("seed")),
                       device=device, out_dir=eval_dir, n_videos=int(c.n_videos),
                       env_kwargs=match_policy(env_kwargs_for(task), policy, {}),
                       max_steps=c.get("max_steps") or task.get("max_episode_steps"),
                       policy_info=checkpoint_info(checkpoint))
    summary.pop("episodes", None)
    summary["checkpoint"] = str(checkpoint)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    return summary


def run(cfg: DictConfig) -> int:
    """CLI verb ``s2robot demo out=DIR [...]`` (``configs/demo.yaml``); returns the exit code."""
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(cfg.device))
    store, run_dir, eval_dir = out / "demos.zarr", out / "train", out / "eval"
    t0 = time.perf_counter()
    _say(f"task {cfg.task.name}, encoder {cfg.encoder.name}, policy {cfg.policy.name}, device {device}, out {out}")
    collect_stage(cfg, store)
    cache_stage(cfg, store, device)
    checkpoint = train_stage(cfg, store, run_dir, device)
    summary = eval_stage(cfg, checkpoint, eval_dir, device)
    lo, hi = summary["success_ci95"]
    files = summary.get("files", {})
    _say(f"done in {(time.perf_counter() - t0) / 60:.1f} min")
    _say(f"success rate: {summary['n_success']}/{summary['n_episodes']} = {100 * summary['success_rate']:.0f}% "
         f"(95% CI {100 * lo:.0f}-{100 * hi:.0f}%)")
    for v in files.get("videos", []):
        _say(f"video:      {v}")
    _say(f"plot:       {files.get('plot')}")
    _say(f"checkpoint: {checkpoint}")
    return 1 if summary.get("all_errored") else 0
