"""``s2robot train``: train a policy on a demonstration store, on cached S2 features when they exist.

    s2robot train task=push_t policy=diffusion_unet encoder=mobilenet_v2 dataset=data/push_t.zarr
    torchrun --nproc_per_node 2 -m s2robot.cli train ...        # DDP (NCCL on GPUs, gloo on CPU)

Pipeline: build the frozen encoder -> pick ``features/<hash>`` matching it (else encode online, saying so) ->
``SequenceDataset`` windows -> fit the normaliser on the training split -> ``build_policy`` -> AdamW + warm-up
cosine schedule, grad clipping, EMA -> loop with per-step seeding, CSV/TensorBoard logs, validation loss and
optional evaluator rollouts -> checkpoints (``checkpoint.py``) that resume exactly.

Exact resume: every step re-seeds torch from ``(seed, rank, step)`` and the data order is a pure function of
``(seed, epoch)`` with the consumed prefix of the epoch skipped, so N + resume + N steps equal 2N straight.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from s2robot.configtools import dataclass_from, section
from s2robot.datasets.feature_cache import STORED_DTYPE, cache_command, cached_feature_sets
from s2robot.datasets.integrity import preflight
from s2robot.datasets.sampler import BatchView, SequenceDataset, draw_views
from s2robot.datasets.store import DatasetError, EpisodeStore
from s2robot.datasets.token_reduction import load_projection
from s2robot.datasets.view_augment import DEFAULT_SHIFT, AugmentSpec, augment_spec
from s2robot.device import autocast_for
from s2robot.encoders import build_encoder
from s2robot.evaluation.env_config import env_kwargs_for
from s2robot.evaluation.rollout import EVAL_SEED_OFFSET, evaluate
from s2robot.policies.base import ShapeMeta
from s2robot.policies.ema import PolicyEMA
from s2robot.policies.factory import build_policy, parse_policy_config
from s2robot.policies.loading import resolve_checkpoint
from s2robot.policies.normalizer import MODES as NORMALIZER_MODES
from s2robot.policies.normalizer import Normalizer
from s2robot.training.checkpoint import load_training_state, save_checkpoint
from s2robot.training.ddp import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown_distributed
from s2robot.training.interrupt import StopRequest, resume_command
from s2robot.training.logger import RunLogger
from s2robot.training.optim import OptimConfig, build_lr_scheduler, build_optimizer

__all__ = ["TrainConfig", "EMAConfig", "DatasetConfig", "NormalizerConfig", "TrainRunConfig", "resolved_config",
           "train", "run", "select_features", "seed_for_step"]


@dataclass
class TrainConfig:
    """``train:`` section of ``configs/train.yaml``."""

    steps: int = 3000  # BC-MLP on cached tokens: 1500-3000 measured equal on lift_cube (docs/policies.md)
    batch_size: int = 64
    grad_clip: float = 1.0  # max global grad norm (0 disables clipping)
    log_every: int = 50
    val_every: int = 500  # validation loss (EMA weights) on the held-out episodes; 0 disables
    val_batches: int = 8
    save_every: int = 500  # checkpoint period; the final step is always saved
    keep_last: int = 2  # older step_* checkpoints are deleted (0 keeps all)
    eval_every: int = 0  # evaluator rollouts (EMA weights) every N steps; 0 disables
    eval_episodes: int = 10
    eval_n_envs: int = 2
    eval_videos: int = 1
    eval_max_steps: int | None = None  # episode limit for these rollouts (None: the task's max_episode_steps)
    tensorboard: bool = True
    wandb: str | None = None  # offline | online: also log to Weights & Biases (pip install wandb)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "val_batches", "save_every", "eval_episodes", "eval_n_envs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "keep_last", "eval_every", "eval_videos"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class EMAConfig:
    """``ema:`` section: diffusers EMAModel with power warm-up."""

    enabled: bool = True
    max_decay: float = 0.9999
    power: float = 0.75
    inv_gamma: float = 1.0
    min_decay: float = 0.0
    update_after_step: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_decay <= self.max_decay < 1.0:
            raise ValueError(f"ema needs 0 <= min_decay <= max_decay < 1, got {self.min_decay}, {self.max_decay}")


@dataclass
class DatasetConfig:
    """``dataset:`` section: the demonstration store and how training reads it (``configs/dataset/default.yaml``
    sets only ``path``; ``dataset=PATH`` on the command line sets it too)."""

    path: str | None = None  # zarr directory, .zip, or fsspec URL
    val_ratio: float = 0.1  # fraction of episodes held out for validation (split by episode)
    seed: int = 0  # split seed
    use_cached_features: bool = True  # read features/<encoder hash> when present instead of running the encoder
    # DataLoader worker processes (each opens the store lazily); None: min(4, the CPUs this process may use), so a
    # 2-core machine does not start more workers than cores (on 2 cores 0 and 4 workers trained equally fast)
    num_workers: int | None = None
    lowdim_cache_mb: int = 256  # low-dim arrays below this total size are held in RAM (once per training)
    token_cache_mb: int = 4096  # cached tokens up to this size: in RAM once per training, workers share (0: stream)
    augment_views: int = 1  # K > 1: train on the cached set with K views per frame (`s2robot cache augment_views=K`)
    augment_shift: int = DEFAULT_SHIFT  # ... cached with this max shift (px of the stored images)
    augment_seed: int = 0  # ... and this seed
    # edge-padded steps a training window may run past an episode's end (datasets/sampler.py). None: horizon - n_obs_steps,
    # every frame is the current observation of some window; n_action_steps - 1 is Diffusion Policy's rule (7 for the
    # diffusion U-Net), which on stack_cubes never showed it the release (docs/policies.md point 6)
    pad_after: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.val_ratio) < 1.0:
            raise ValueError(f"dataset.val_ratio must be in [0, 1), got {self.val_ratio}")
        for name in ("num_workers", "lowdim_cache_mb", "token_cache_mb"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 0:
                raise ValueError(f"dataset.{name} must be >= 0, got {getattr(self, name)}")
        if self.pad_after is not None and int(self.pad_after) < 0:
            raise ValueError(f"dataset.pad_after must be >= 0 or null, got {self.pad_after}")
        try:
            self.augment()
        except ValueError as e:
            raise ValueError(f"dataset.{e}") from None

    def augment(self) -> AugmentSpec | None:
        """The requested augmented-view set (None: the plain cache)."""
        return augment_spec(self.augment_views, self.augment_shift, self.augment_seed)


@dataclass
class NormalizerConfig:
    """``normalizer:`` section: the per-key mode, minmax (to [-1, 1]) | gaussian | identity."""

    action: str = "minmax"
    proprio: str = "minmax"
    state: str = "minmax"  # when a policy reads (task.env_kwargs.state_obs) or estimates (policy.obs.estimate_state) it

    def __post_init__(self) -> None:
        bad = {k: v for k, v in asdict(self).items() if v not in NORMALIZER_MODES}
        if bad:
            raise ValueError(f"normalizer: mode(s) {bad} not one of {sorted(NORMALIZER_MODES)}")


@dataclass
class TrainRunConfig:
    """The schema of ``configs/train.yaml`` (a hydra structured config, registered as ``train_schema`` by the CLI):
    every key of ``s2robot train`` with its one default. The YAML files only override; ``task``, ``policy`` and
    ``encoder`` come from their config groups (the policy's keys are checked by ``parse_policy_config``)."""

    task: Any = None  # configs/task/<name>.yaml: cameras, env settings
    policy: Any = None  # configs/policy/<name>.yaml over the policy type's dataclasses
    encoder: Any = None  # configs/encoder/<name>.yaml = build_encoder kwargs
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    threads: int | None = 1  # torch CPU threads for training (None: torch's default, one per core; docs/policies.md)
    out_dir: str | None = None  # None: outputs/train/<task>-<policy>-<encoder>
    resume: Any = False  # true: continue from the latest checkpoint in out_dir; or a checkpoint directory
    pool_grid: int | None = None  # pick cached features pooled to this grid (None: unpooled first, else any pooled)
    token_dim: int | None = None  # pick cached features PCA-reduced to this many channels (None: full)


#: the sections of a training config that have their own dataclass (``policy`` is parsed by its type)
SECTIONS = {"dataset": DatasetConfig, "normalizer": NormalizerConfig, "train": TrainConfig, "optim": OptimConfig,
            "ema": EMAConfig}


def resolved_config(cfg: Any) -> dict[str, Any]:
    """A training config with every section validated and completed from the schema (:class:`TrainRunConfig`):
    unknown keys, in any section, are an error naming them. The result is what the checkpoint records, every value
    included."""
    c = section(cfg, "train config")
    keys = [f.name for f in fields(TrainRunConfig)]
    unknown = sorted(set(c) - set(keys))
    if unknown:
        raise ValueError(f"train config: unknown key(s) {unknown}; valid keys are {sorted(keys)}")
    ptype, head, obs = parse_policy_config(c.get("policy") or {})
    name = section(c.get("policy"), "policy").get("name")
    c["policy"] = {"name": name, "type": ptype, **asdict(head), "obs": asdict(obs)}
    for key, cls in SECTIONS.items():
        c[key] = asdict(dataclass_from(cls, c.get(key), key))
    defaults = TrainRunConfig()
    for key in keys:
        if key not in c:
            c[key] = getattr(defaults, key)
    return c


def seed_for_step(seed: int, rank: int, step: int) -> int:
    """A 63-bit torch seed derived from (seed, rank, step) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


# ------------------------------------------------------------------------------------------------------ data
class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (this rank's shard of a (seed, epoch)-seeded permutation) that can skip a prefix."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, views: int = 1,
                 cameras: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0
        self.views, self.cameras = int(views), int(cameras)

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, ...]]:
        """Window indices; with ``views`` > 1, ``(window, view per camera...)`` rows (views from
        :func:`~s2robot.datasets.sampler.draw_views`, a function of (seed, epoch, rank) like the order)."""
        order: Iterator[Any] = super().__iter__()
        if self.views > 1:
            drawn = draw_views(self.seed, self.epoch, self.rank, self.num_samples, self.views, self.cameras).tolist()
            order = ((int(i), *row) for i, row in zip(order, drawn))
        return itertools.islice(order, self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def select_features(store: Any, encoder: Any, cameras: list[str], pool_grid: int | None,
                    token_dim: int | None = None, augment: AugmentSpec | None = None) -> tuple[str | None, dict]:
    """The ``features/<key>`` of ``store`` made by ``encoder`` (same config_hash), complete for ``cameras``.

    Prefers the requested ``pool_grid`` (None: unpooled first). ``token_dim``: only sets PCA-reduced to that many
    channels (None: only unreduced sets). ``augment``: only sets with exactly these augmented views (None: only
    plain sets). Returns (key, attrs) or (None, {}).
    """
    found = []
    for key, attrs in cached_feature_sets(store).items():
        progress = attrs.get("progress", {})
        if attrs.get("config_hash") != encoder.config_hash:
            continue
        if any(int(progress.get(c, 0)) < store.n_steps for c in cameras):
            continue
        reduced = (attrs.get("reduce") or {}).get("dim")
        if (None if reduced is None else int(reduced)) != (None if token_dim is None else int(token_dim)):
            continue
        if (attrs.get("augment") or None) != (augment.attrs() if augment is not None else None):
            continue
        pooled = attrs.get("pool_grid")
        grid = encoder.grid if pooled is None else int(pooled)
        if pool_grid is not None and grid != int(pool_grid):
            continue
        found.append((pooled is not None, key, attrs))
    if not found:
        return None, {}
    _, key, attrs = min(found, key=lambda f: (f[0], f[1]))
    return key, attrs


# ------------------------------------------------------------------------------------------------------ helpers
def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) for k, v in batch.items()}


def _ema_weights(policy: torch.nn.Module, ema: Any):
    """The EMA weights swapped into ``policy`` for the duration of a ``with`` (no-op without EMA)."""
    return ema.applied(policy) if ema is not None else contextlib.nullcontext()


def _prune(ckpt_dir: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    steps = sorted((p for p in ckpt_dir.glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(f"[train] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------ train
def train(cfg: Any) -> Path:
    """Train per ``cfg`` (the composed ``configs/train.yaml``); returns the final checkpoint directory."""
    c = resolved_config(cfg)
    info, device = init_distributed(c["device"])
    threads = c["threads"]
    if device.type == "cpu" and threads:
        # Small policy models on a shared 2-core CPU: one thread ran a cached-token BC-MLP step 20x faster than two
        # (13-24 vs 0.6-1 steps/s with other jobs running, docs/policies.md); OpenMP teams stall when oversubscribed.
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1 or null, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        with contextlib.ExitStack() as cleanup:  # store, logger and progress bar are closed on any exit
            return _train(c, info, device, cleanup)
    finally:
        shutdown_distributed()


def _prepare_data(c: dict[str, Any], info: DistInfo, obs_cfg: Any, head_cfg: Any, tcfg: TrainConfig):
    """Open the store, build the frozen encoder, pick cached features, make the train/val windows and the shape
    metadata -> (store, encoder or None, train_ds, val_ds or None, ShapeMeta)."""
    task_cfg, dcfg = c.get("task") or {}, c["dataset"]
    store = EpisodeStore.open(dcfg["path"], mode="r")
    # task.cameras: [] trains a policy without images (e.g. on the privileged state only)
    cameras = list(store.cameras if task_cfg.get("cameras") is None else task_cfg["cameras"])
    missing = [cam for cam in cameras if f"{cam}_image" not in store.spec]
    if missing:
        raise ValueError(f"{dcfg['path']}: no images for camera(s) {missing}; the store has keys {store.keys}; "
                         f"train on the cameras it has with task.cameras=[{','.join(store.cameras)}]")
    use_state, estimate_state = _state_use(task_cfg, obs_cfg, store, cameras, dcfg["path"])

    encoder, feature_key, feature_attrs = None, None, {}
    augment = dataclass_from(DatasetConfig, dcfg, "dataset").augment()
    if augment is not None and not (obs_cfg.backbone == "tokens" and cameras and dcfg["use_cached_features"]):
        raise ValueError(f"dataset.augment_views={augment.views} selects cached token views; it needs "
                         "policy.obs.backbone=tokens, cameras and dataset.use_cached_features=true")
    if obs_cfg.backbone == "tokens" and cameras:
        enc_cfg = c.get("encoder") or {}
        if not enc_cfg.get("name"):
            raise ValueError("policy.obs.backbone=tokens needs an encoder: pass encoder=<name>")
        encoder = build_encoder(**enc_cfg, device="cpu")
        if dcfg["use_cached_features"]:
            feature_key, feature_attrs = _cached_features(c, info, store, encoder, cameras, augment)
        if feature_key and obs_cfg.cache_dtype != STORED_DTYPE:
            raise ValueError(
                f"policy.obs.cache_dtype={obs_cfg.cache_dtype} but the cached features are {STORED_DTYPE}: live "
                f"frames would not give the tokens the policy was trained on; use policy.obs.cache_dtype="
                f"{STORED_DTYPE}, or dataset.use_cached_features=false to train on online {obs_cfg.cache_dtype} tokens")
        if feature_key:
            _log(info, f"using cached features {dcfg['path']}/features/{feature_key} (encoder {enc_cfg['name']}, "
                       f"hash {encoder.config_hash})")
        else:
            why = "cached features disabled (dataset.use_cached_features=false)" if not dcfg[
                "use_cached_features"] else (
                f"no cached features for encoder {enc_cfg['name']!r} (hash {encoder.config_hash}) in the store")
            _log(info, f"{why}: encoding images online with the frozen encoder (slower; "
                       f"`{cache_command(dcfg['path'], enc_cfg)}` caches them once)")

    obs_keys = [f"{cam}_image" for cam in cameras] + (["proprio"] if "proprio" in store.spec else []) + (
        ["state"] if use_state or estimate_state else [])
    # every chunk present, float keys finite (a listing + the low-dim data)
    preflight(store, [k for k in obs_keys if not (feature_key and k.endswith("_image"))] + ["action"], feature_key)
    pad_after = None if dcfg.get("pad_after") is None else int(dcfg["pad_after"])
    max_pad = int(head_cfg.horizon) - head_cfg.n_obs_steps  # SequenceDataset's bound, named in config keys here
    if pad_after is not None and pad_after > max_pad:
        raise ValueError(f"dataset.pad_after={pad_after} exceeds policy.horizon - policy.n_obs_steps = {max_pad}")
    ds_kw = dict(horizon=int(head_cfg.horizon), n_obs_steps=head_cfg.n_obs_steps,
                 n_action_steps=head_cfg.n_action_steps, obs_keys=obs_keys, feature_hash=feature_key,
                 val_ratio=float(dcfg["val_ratio"]), seed=int(dcfg["seed"]),
                 lowdim_cache_bytes=int(dcfg["lowdim_cache_mb"]) << 20,
                 token_cache_bytes=int(dcfg["token_cache_mb"]) << 20,
                 pad_after=pad_after)
    train_ds = SequenceDataset(store, split="train", **ds_kw)
    val_ds = SequenceDataset(store, split="val", **ds_kw) if tcfg.val_every and ds_kw["val_ratio"] > 0 else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    train_ds.load_into_ram()  # before the loader's workers fork: they share it (one copy per training)
    if val_ds is not None:
        val_ds.load_into_ram(share_with=train_ds)

    shapes = train_ds.shapes
    proprio_dim = int(shapes["proprio"][0]) if "proprio" in shapes else 0
    tok_shape = None
    if encoder is not None:
        tok_shape = list(shapes[f"{cameras[0]}_tokens"]) if feature_key else [encoder.num_tokens, encoder.out_dim]
    meta = ShapeMeta(
        cameras=cameras, proprio_dim=proprio_dim, action_dim=int(shapes["action"][0]),
        state_dim=int(shapes["state"][0]) if use_state else 0,
        estimated_state_dim=int(shapes["state"][0]) if estimate_state else 0,
        image_shape=list(store.spec[f"{cameras[0]}_image"]["shape"]) if cameras else None, token_shape=tok_shape,
        num_prefix=int(encoder.num_prefix) if encoder is not None else 0,
        token_pool_grid=feature_attrs.get("pool_grid"), feature_hash=feature_key,
        token_reduce=({"method": "pca", "dim": int(feature_attrs["reduce"]["dim"]), "in_dim": int(encoder.out_dim)}
                      if feature_attrs.get("reduce") else None),
    )
    return store, encoder, train_ds, val_ds, meta


def _state_use(task_cfg: dict[str, Any], obs_cfg: Any, store: Any, cameras: list[str], path: str) -> tuple[bool, bool]:
    """(the policy reads the store's privileged ``state``, the policy estimates it from images and trains the estimate
    on it); a store without ``state`` or a contradictory request is an error naming the fix."""
    use_state = bool((task_cfg.get("env_kwargs") or {}).get("state_obs", False))
    if use_state and "state" not in store.spec:
        raise ValueError(f"{path}: task.env_kwargs.state_obs=true but the store has no 'state' key; collect "
                         f"with task.env_kwargs.state_obs=true (keys: {store.keys})")
    estimate_state = bool(obs_cfg.estimate_state)
    if estimate_state and (use_state or not cameras or "state" not in store.spec):
        why = ("the policy would read the state too: drop task.env_kwargs.state_obs=true" if use_state else
               "it has no cameras" if not cameras else
               f"the store has no 'state' key to train the estimate on; collect with task.env_kwargs.state_obs=true "
               f"(keys: {store.keys})")
        raise ValueError(f"{path}: policy.obs.estimate_state=true estimates the state from images, but {why}")
    return use_state, estimate_state


def _cached_features(c: dict[str, Any], info: DistInfo, store: Any, encoder: Any, cameras: list[str],
                     augment: AugmentSpec | None) -> tuple[str | None, dict]:
    """The cached feature set training reads: (key, attrs), or (None, {}) to encode online. A requested set that
    cannot be used (augmented views, or token_dim while full tokens are cached) is an error naming the command."""
    dcfg, enc_cfg = c["dataset"], c.get("encoder") or {}
    token_dim = c.get("token_dim")
    feature_key, feature_attrs = select_features(store, encoder, cameras, c.get("pool_grid"), token_dim,
                                                 augment)
    if augment is not None and not feature_key:
        raise ValueError(
            f"{dcfg['path']}: no complete cached features with {augment.views} augmented views (shift "
            f"{augment.shift}, seed {augment.seed}) for this encoder; make them with `"
            f"{cache_command(dcfg['path'], enc_cfg, c.get('pool_grid'), augment.attrs())}"
            f"{f' token_dim={int(token_dim)}' if token_dim else ''}`, or train without dataset.augment_views")
    if token_dim and not feature_key:
        full, _ = select_features(store, encoder, cameras, c.get("pool_grid"), None)
        if full:
            raise ValueError(
                f"{dcfg['path']}: no features reduced to token_dim={token_dim} channels; add them (seconds) "
                f"with `{cache_command(dcfg['path'], enc_cfg, c.get('pool_grid'))} token_dim={token_dim}`, "
                f"or train on the full tokens with token_dim=null")
        _log(info, f"token_dim={token_dim} needs a PCA fitted on cached features; none are cached, so the "
                   f"full tokens are used")
    return feature_key, feature_attrs


def _fit_normalizer(c: dict[str, Any], train_ds: Any, meta: Any) -> Any:
    """Normaliser for ``action`` (+ ``proprio``, ``state``) fitted on the training split, modes from
    ``normalizer:``."""
    stats = train_ds.lowdim_data(["action"] + (["proprio"] if meta.proprio_dim else []) + (
        ["state"] if meta.state_width else []))
    return Normalizer().fit(stats, modes={k: c["normalizer"][k] for k in stats})


@dataclass
class TrainRun:
    """Everything one training run uses, built by :func:`build_run` and stepped by :func:`run_steps`."""

    c: dict[str, Any]  # the whole resolved config (plain containers)
    info: DistInfo
    device: torch.device
    tcfg: TrainConfig
    seed: int
    store: Any  # EpisodeStore (read-only)
    encoder: Any  # the frozen token encoder, or None
    train_ds: Any  # SequenceDataset, training split
    val_ds: Any  # SequenceDataset, validation split, or None
    meta: ShapeMeta
    policy: torch.nn.Module
    model: torch.nn.Module  # ``policy``, wrapped in DistributedDataParallel when distributed
    named: list[tuple[str, torch.nn.Parameter]]  # the trainable parameters
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    ema: Any  # PolicyEMA or None
    task_cfg: dict[str, Any]
    task_name: str
    out_dir: Path
    start_step: int
    saved_cfg: dict[str, Any]  # what checkpoints record as config.yaml (+ shape_meta)
    sampler: ResumableSampler
    loader: DataLoader
    per_epoch: int  # optimiser steps per epoch
    logger: RunLogger

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"


@dataclass
class _LoopState:
    """What the step loop carries from one step to the next."""

    step: int
    epoch: int
    loss_sum: torch.Tensor  # summed since the last log line, on the device
    nonfinite: torch.Tensor  # count of non-finite losses not yet checked, on the device
    loss_n: int = 0
    t_last: float = 0.0
    checked_to: int = 0  # every step up to this one had a finite loss
    last_saved: Path | None = None
    eval_disabled: bool = False


def _train(c: dict[str, Any], info: DistInfo, device: torch.device, cleanup: contextlib.ExitStack) -> Path:
    run = build_run(c, info, device, cleanup)
    if run.start_step >= run.tcfg.steps:
        _log(info, f"nothing to do: the checkpoint is at step {run.start_step} >= train.steps={run.tcfg.steps}")
        return resolve_checkpoint(run.out_dir)
    return run_steps(run, cleanup)


def build_run(c: dict[str, Any], info: DistInfo, device: torch.device, cleanup: contextlib.ExitStack) -> TrainRun:
    """Validate the config, open the data, build policy + optimiser (+ EMA), resume, and make the loader."""
    tcfg = dataclass_from(TrainConfig, c.get("train"), "train")
    ocfg = dataclass_from(OptimConfig, c.get("optim"), "optim")
    ecfg = dataclass_from(EMAConfig, c.get("ema"), "ema")
    pcfg = c.get("policy") or {}
    _, head_cfg, obs_cfg = parse_policy_config(pcfg)  # validate before any heavy work
    if not c["dataset"]["path"]:
        raise ValueError("no dataset: pass dataset=PATH (a zarr store written by `s2robot collect` or imported)")
    seed = int(c["seed"])
    torch.manual_seed(seed)  # model init: identical on every rank (DDP also broadcasts rank 0's weights)
    np.random.seed(seed)

    store, encoder, train_ds, val_ds, meta = _prepare_data(c, info, obs_cfg, head_cfg, tcfg)
    cleanup.callback(store.close)
    policy = build_policy(pcfg, meta, _fit_normalizer(c, train_ds, meta), encoder)
    if meta.token_reduce:  # the cache's PCA goes into the policy, which applies it to live frames
        policy.obs_conditioner.set_token_projection(load_projection(store.group["features"][meta.feature_hash]))
    policy = policy.to(device)
    named = policy.trainable_named_parameters()
    optimizer = build_optimizer(named, ocfg)
    lr_scheduler = build_lr_scheduler(optimizer, ocfg, tcfg.steps)
    ema = PolicyEMA(policy, ecfg.max_decay, ecfg.power, ecfg.inv_gamma, ecfg.min_decay,
                    ecfg.update_after_step).to(device) if ecfg.enabled else None

    task_cfg = c.get("task") or {}
    task_name = task_cfg.get("name") or store.attrs.get("task") or "task"
    out_dir = _out_dir(c, task_name, encoder, obs_cfg, meta)
    start_step = _resume(c, info, out_dir, policy, optimizer, lr_scheduler, ema)
    saved_cfg = _saved_config(c, info, encoder, meta)
    model = policy
    if info.distributed:
        model = DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)
    sampler, loader, per_epoch = _make_loader(c, info, device, train_ds, tcfg, seed)
    logger = RunLogger(out_dir, enabled=info.is_main, tensorboard=tcfg.tensorboard, resume_step=start_step,
                       wandb=tcfg.wandb, config=c)
    cleanup.callback(logger.close)
    n_params = sum(p.numel() for _, p in named)
    _log(info, f"{pcfg.get('name')}: {n_params / 1e6:.2f} M trainable params, {len(train_ds)} train windows"
               f"{f', {len(val_ds)} val windows' if val_ds else ''}, world size {info.world_size}, device {device}, "
               f"steps {start_step}->{tcfg.steps}, out {out_dir}")
    return TrainRun(c, info, device, tcfg, seed, store, encoder, train_ds, val_ds, meta, policy, model, named,
                    optimizer, lr_scheduler, ema, saved_cfg.get("task") or {}, task_name, out_dir, start_step,
                    saved_cfg, sampler, loader, per_epoch, logger)


def _out_dir(c: dict[str, Any], task_name: str, encoder: Any, obs_cfg: Any, meta: ShapeMeta) -> Path:
    """``out_dir`` of the config, else ``outputs/train/<task>-<policy>-<vision>``."""
    vision = (c.get("encoder") or {}).get("name") if encoder is not None else (
        obs_cfg.backbone if meta.cameras else "state")
    policy_name = (c.get("policy") or {}).get("name", "policy")
    return Path(c.get("out_dir") or f"outputs/train/{task_name}-{policy_name}-{vision}")


def _resume(c: dict[str, Any], info: DistInfo, out_dir: Path, policy, optimizer, lr_scheduler, ema) -> int:
    """The step to start from: 0, or that of the checkpoint ``resume=`` names (``true``/``auto``: the run's latest,
    whose weights, optimiser, scheduler and EMA are restored in place). Refuses to overwrite an earlier run."""
    ckpt_dir, resume = out_dir / "checkpoints", c["resume"]
    if not resume and info.is_main and any(ckpt_dir.glob("step_*")):
        raise FileExistsError(
            f"{out_dir} already holds checkpoints of an earlier run; pass resume=true to continue it, or choose "
            "another out_dir=")
    if not resume:
        return 0
    src = None
    if resume is True or str(resume).lower() in ("true", "auto"):
        with contextlib.suppress(FileNotFoundError):
            src = resolve_checkpoint(out_dir)
        if src is None:
            _log(info, f"resume: no checkpoint in {out_dir} yet; starting from step 0")
    else:
        src = resolve_checkpoint(resume)
    if src is None:
        return 0
    state = load_training_state(src, policy, optimizer, lr_scheduler, ema)
    _log(info, f"resumed from {src} at step {int(state['step'])}")
    return int(state["step"])


def _saved_config(c: dict[str, Any], info: DistInfo, encoder: Any, meta: ShapeMeta) -> dict[str, Any]:
    """The config checkpoints record: the run's, plus ``shape_meta``, the encoder hash, the trained image size."""
    saved = {**c, "shape_meta": meta.to_dict()}
    if isinstance(c.get("encoder"), dict) and "engine" in c["encoder"]:
        # the engine is how this machine computed the encoder, not what it is: evaluation picks its own (engine=...)
        saved["encoder"] = {k: v for k, v in c["encoder"].items() if k != "engine"}
    if encoder is not None:  # lets load_policy keep the hash when the original weights file is absent
        saved["encoder_config_hash"] = encoder.config_hash
    task_cfg = c.get("task") or {}
    size = meta.image_shape[0] if meta.image_shape else None
    if task_cfg and size is not None and task_cfg.get("image_size") not in (None, size):
        # evaluation renders at the task's image_size: record the resolution the policy was trained on
        _log(info, f"the store's images are {size} px, task.image_size is {task_cfg['image_size']}: the checkpoint "
                   f"records image_size={size} so evaluation renders what the policy was trained on")
        saved["task"] = {**task_cfg, "image_size": size}
    saved.pop("resume", None)
    return saved


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _make_loader(c: dict[str, Any], info: DistInfo, device: torch.device, train_ds: Any, tcfg: TrainConfig,
                 seed: int) -> tuple[ResumableSampler, DataLoader, int]:
    """(sampler, loader of whole batches, batches per epoch) for this rank."""
    # augmented views: one view per window and camera, drawn with the order from (seed, epoch, rank)
    sampler = ResumableSampler(train_ds, info.world_size, info.rank, seed, views=train_ds.augment_views,
                               cameras=len(train_ds.token_keys))
    per_epoch = len(sampler) // tcfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"the training split has {len(train_ds)} windows ({len(sampler)} per rank), fewer than "
                         f"train.batch_size={tcfg.batch_size}; lower the batch size or add demonstrations")
    workers = c["dataset"]["num_workers"]
    workers = min(4, _usable_cpus()) if workers is None else int(workers)
    loader = DataLoader(BatchView(train_ds), sampler=BatchSampler(sampler, tcfg.batch_size, drop_last=True),
                        batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda")
    return sampler, loader, per_epoch


def run_steps(run: TrainRun, cleanup: contextlib.ExitStack) -> Path:
    """Step ``run`` from its start step to ``train.steps``; validation, rollouts and checkpoints are hooks."""
    tcfg, info, device = run.tcfg, run.info, run.device
    epoch, in_epoch = divmod(run.start_step, run.per_epoch)
    run.sampler.set_position(epoch, in_epoch * tcfg.batch_size)
    bar = tqdm(total=tcfg.steps, initial=run.start_step, desc="train", unit="step",
               disable=not (info.is_main and tcfg.progress))
    cleanup.callback(bar.close)
    # Non-finite losses are counted on the device and checked every step on CPU, but on CUDA only when the loop
    # syncs anyway (log/val/eval/save steps), summed over ranks so that every DDP rank raises together. Nothing is
    # saved from weights a non-finite step touched: each save step checks first.
    st = _LoopState(step=run.start_step, epoch=epoch, loss_sum=torch.zeros((), device=device),
                    nonfinite=torch.zeros((), dtype=torch.int64, device=device), t_last=time.perf_counter(),
                    checked_to=run.start_step)
    check_every = tcfg.log_every if device.type == "cuda" else 1
    run.policy.train()
    stop = cleanup.enter_context(StopRequest(enabled=not info.distributed))  # Ctrl-C: save, print how to resume
    for batch in _batches(run, st):
        grad_norm = _optimizer_step(run, st, batch)
        bar.update(1)
        last = st.step == tcfg.steps
        val_due = run.val_ds is not None and tcfg.val_every and (st.step % tcfg.val_every == 0 or last)
        eval_due = tcfg.eval_every and not st.eval_disabled and (st.step % tcfg.eval_every == 0 or last)
        save_due = st.step % tcfg.save_every == 0 or last or stop.requested
        if st.step % check_every == 0 or last or val_due or eval_due or save_due:
            _check_finite(run, st)
        if st.step % tcfg.log_every == 0 or last:
            _log_train(run, st, grad_norm, bar)
        if val_due:
            _validate(run, st.step)
        if eval_due:
            st.eval_disabled = not _rollouts(run, st.step) if info.is_main else st.eval_disabled
            barrier(info)
        if save_due:
            st.last_saved = _save(run, st)
            if stop.requested:
                _log(info, f"interrupted: saved {st.last_saved}; resume with: {resume_command(run.out_dir)}")
                raise KeyboardInterrupt
    bar.close()  # before the closing message (the ExitStack closes the logger and the store)
    final = run.ckpt_dir / f"step_{tcfg.steps:07d}"
    _log(info, f"done: checkpoint {final}  (load with s2robot.load_policy('{final}'); logs in {run.out_dir})")
    return final


def _batches(run: TrainRun, st: _LoopState) -> Iterator[dict[str, torch.Tensor]]:
    """Batches until ``train.steps``, on the device; a new epoch re-seeds the sampler's order."""
    batches = iter(run.loader)
    while st.step < run.tcfg.steps:
        try:
            batch = next(batches)
        except StopIteration:
            st.epoch += 1
            run.sampler.set_position(st.epoch, 0)
            batches = iter(run.loader)
            continue
        yield _to_device(batch, run.device)


def _optimizer_step(run: TrainRun, st: _LoopState, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One seeded forward/backward/clip/step (+ LR schedule, EMA); returns the gradient norm (before clipping)."""
    torch.manual_seed(seed_for_step(run.seed, run.info.rank, st.step))
    with autocast_for(run.device):
        loss = run.model(batch)
    st.nonfinite += ~torch.isfinite(loss.detach())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = run.tcfg.grad_clip if run.tcfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in run.named], clip)
    run.optimizer.step()
    run.lr_scheduler.step()
    if run.ema is not None:
        run.ema.step(run.policy)
    st.step += 1
    st.loss_sum += loss.detach().float()
    st.loss_n += 1
    return grad_norm


def _check_finite(run: TrainRun, st: _LoopState) -> None:
    """Raise (on every rank together) when a loss since the last check was non-finite."""
    if float(all_reduce_mean(st.nonfinite.float(), run.info)) > 0:
        raise FloatingPointError(
            f"non-finite training loss between steps {st.checked_to + 1} and {st.step}"
            f"{'' if run.info.world_size == 1 else ' (on some rank)'}; lower optim.lr or check the data "
            f"(`s2robot dataset verify {run.c['dataset']['path']}`). Checkpoints in {run.ckpt_dir} hold only weights "
            "from before it.")
    st.checked_to = st.step


def _log_train(run: TrainRun, st: _LoopState, grad_norm: torch.Tensor, bar) -> None:
    mean_loss = float(all_reduce_mean(st.loss_sum / st.loss_n, run.info))
    now = time.perf_counter()
    run.logger.log("train", st.step, {
        "epoch": st.epoch, "loss": mean_loss, "lr": run.lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
        "steps_per_s": st.loss_n / max(now - st.t_last, 1e-9)})
    bar.set_postfix(loss=f"{mean_loss:.4f}")
    st.loss_sum.zero_()
    st.loss_n, st.t_last = 0, now


def _validate(run: TrainRun, step: int) -> None:
    """Validation loss with the EMA weights, logged as ``val_loss`` (main rank; the others wait)."""
    if run.info.is_main:
        with _ema_weights(run.policy, run.ema):
            val = _val_loss(run.policy, run.val_ds, run.tcfg, run.seed, run.device)
        run.logger.log("val", step, {"val_loss": val})
    barrier(run.info)


def _save(run: TrainRun, st: _LoopState) -> Path:
    """Checkpoint ``step_<N>`` (main rank; older ones pruned to ``keep_last``); returns its path."""
    path = run.ckpt_dir / f"step_{st.step:07d}"
    if run.info.is_main:
        save_checkpoint(path, run.policy, run.saved_cfg, step=st.step, epoch=st.epoch, optimizer=run.optimizer,
                        lr_scheduler=run.lr_scheduler, ema=run.ema, previous=st.last_saved,
                        extra_state={"seed": run.seed, "world_size": run.info.world_size,
                                     "rng": {"scheme": "torch.manual_seed(SeedSequence([seed, rank, step]))",
                                             "seeds": [run.seed, run.info.world_size]}})
        _prune(run.ckpt_dir, run.tcfg.keep_last)
    barrier(run.info)
    return path


@torch.no_grad()
def _val_loss(policy: Any, val_ds: Any, tcfg: TrainConfig, seed: int, device: torch.device) -> float:
    """Mean loss over ``val_batches`` fixed batches (fixed noise: a forked, seeded RNG)."""
    policy.eval()
    n = len(val_ds)
    bs = min(tcfg.batch_size, n)
    idx = np.random.default_rng(seed).permutation(n)[: bs * tcfg.val_batches]
    losses = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for chunk in np.array_split(idx, max(1, math.ceil(len(idx) / bs))):
            with autocast_for(device):
                losses.append(float(policy.compute_loss(_to_device(val_ds.get_batch(chunk), device))))
    policy.train()
    return float(np.mean(losses))


def _rollouts(run: TrainRun, step: int) -> bool:
    """Evaluator rollouts with EMA weights; returns False (and says why) when rollouts are unavailable."""
    task_cfg, tcfg = run.task_cfg, run.tcfg
    if not task_cfg.get("name"):
        _log(run.info, "periodic rollouts disabled: no task config (pass task=<name>)")
        return False
    with _ema_weights(run.policy, run.ema):
        run.policy.eval()
        summary = evaluate(run.policy, task=task_cfg["name"], n_envs=tcfg.eval_n_envs, episodes=tcfg.eval_episodes,
                           seed=run.seed + EVAL_SEED_OFFSET, device=run.device,
                           out_dir=run.out_dir / "eval" / f"step_{step:07d}", n_videos=tcfg.eval_videos,
                           env_kwargs=env_kwargs_for(task_cfg), progress=False,
                           max_steps=tcfg.eval_max_steps or task_cfg.get("max_episode_steps"),  # None: the env's
                           policy_info={"checkpoint": None, "step": step, "trained_task": run.task_name})
    run.policy.train()
    run.logger.log("eval", step, {"success_rate": summary["success_rate"],
                                  "mean_max_score": summary.get("mean_max_score")})
    _log(run.info, f"step {step}: rollout success {summary['success_rate']:.2f} over {summary['n_episodes']} episodes")
    return True


def run(cfg: Any) -> str:
    """CLI verb ``s2robot train task=... policy=... encoder=... dataset=PATH [train.steps=...]``.

    Configuration and input errors end the command with their message instead of a traceback.
    """
    try:
        return str(train(cfg))
    except (ValueError, KeyError, FileExistsError, FileNotFoundError, DatasetError) as e:
        raise SystemExit(f"s2robot train: {e}") from e
