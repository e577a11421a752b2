"""Frozen-feature cache: run the S2 encoder once over every frame and keep its tokens in the store.

``features/<key>/<camera>`` holds float16 (T_total, N', D) tokens where ``key = encoder.config_hash`` (plus
``_pool<g>`` when the patch grid is area-pooled to ``g x g``). The group's attrs record the encoder config, the
pooling, and per-camera progress; a changed encoder config gives a different hash, hence a different key, so
stale features are never reused (and a same-key group written by a different config is refused).

Resumable: tokens are written batch by batch and ``attrs["progress"][camera]`` (frames done) is updated after each
batch, so a rerun after an interruption starts from the last finished batch. Episodes appended after caching are
picked up by a rerun (the arrays grow to the store's length).

Augmented views (``augment_views=K`` > 1, :mod:`~s2robot.datasets.view_augment`): ``features/<key>_aug<K>sh<S>sd<R>``
holds float16 (T_total, K, N', D) per camera, view 0 the frame itself and views 1..K-1 seeded random shifts; the
group's ``augment`` attrs record ``{views, shift, seed}``. View 0 is stored again (not read from the plain set):
the set is self-contained, and a frame's K views share one chunk.

Storage: one frame per chunk (Blosc lz4 with byte shuffle), so a training window decodes exactly its frames; the
sampler's ``FrameReader`` reads these chunk files directly. (zarr sharding would cut the file count, but reads of
sharded arrays go through zarr's slower general path; see docs/datasets.md.)
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec

from s2robot.configs import configs_dir
from s2robot.device import autocast_for, pin_if_cuda, resolve_device
from s2robot.encoders import build_encoder
from s2robot.tokens import TokenProjection, pool_tokens, tokens_as_cached  # noqa: F401  (pool_tokens: re-exported)

from .integrity import check_present, read_steps
from .store import WRITE_ALL_CHUNKS, DatasetError, EpisodeStore, StoreLike, describe
from .token_reduction import (create_reduced_group, fit_projection, fit_rows, load_projection, reduce_features,
                              reduced_attrs, reduced_key, set_is_complete)
from .view_augment import AugmentSpec, augment_spec, shifted_views, view_offsets

STORED_DTYPE = "float16"  # the cache's token dtype; a policy trained on it must round online tokens the same way
TOKEN_CODEC = dict(cname="lz4", clevel=1, shuffle="shuffle", typesize=2)
CACHE_FORMAT = 1


def feature_hash_for(encoder: Any, pool_grid: int | None = None, augment: AugmentSpec | None = None) -> str:
    """The ``features/<key>`` name for ``encoder`` tokens, optionally pooled to a ``pool_grid`` x ``pool_grid`` grid,
    optionally with ``augment`` views (``_aug<K>sh<shift>sd<seed>``)."""
    key = str(encoder.config_hash)
    if pool_grid is not None and int(pool_grid) != int(encoder.grid):
        key += f"_pool{int(pool_grid)}"
    return key + (augment.key_suffix if augment is not None else "")


def _feature_meta(encoder: Any, plan: "_CachePlan") -> dict[str, Any]:
    """The attrs that identify a feature set's tokens (a reduced set adds ``reduce`` and its own ``out_dim``)."""
    meta = {
        "format": CACHE_FORMAT,
        "config_hash": str(encoder.config_hash),
        "encoder_config": encoder.config,
        "pool_grid": plan.pool_grid,
        "grid": int(plan.pool_grid or plan.grid),
        "num_prefix": plan.n_prefix,
        "num_tokens": plan.n_tok,
        "out_dim": plan.d,
    }
    if plan.augment is not None:  # absent for the plain cache, whose attrs stay as they were
        meta["augment"] = plan.augment.attrs()
    return meta


def _feature_group(store: EpisodeStore, encoder: Any, plan: "_CachePlan") -> zarr.Group:
    meta = _feature_meta(encoder, plan)
    feats, key = store.group.require_group("features"), plan.key
    if key in feats:
        group = feats[key]
        old = {k: group.attrs.get(k) for k in meta}
        if old != meta:
            diff = sorted(k for k in meta if old[k] != meta[k])
            raise DatasetError(
                f"{describe(store.path)}: features/{key} was written by a different encoder setup (differs in "
                f"{diff}); refusing to reuse it. Delete features/{key} to recompute."
            )
        return group
    return feats.create_group(key, attributes={**meta, "progress": {}})


def cache_features(
    path: StoreLike,
    encoder: Any,
    cameras: Sequence[str] | None = None,
    batch_size: int = 256,
    pool_grid: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    token_dim: int | None = None,
    augment_views: int = 1,
    augment_shift: int | None = None,
    augment_seed: int = 0,
    keep_unreduced: bool = False,
) -> str:
    """Encode every frame of every camera of the store at ``path`` and store float16 tokens; returns the key.

    ``token_dim``: store the tokens PCA-reduced to this many channels and return that set's key
    (``features/<key>_pca<token_dim>``, :mod:`~s2robot.datasets.token_reduction`). The PCA is fitted on a seeded
    sample of frames encoded first, then every frame is encoded and written reduced: the full-width tokens (D
    channels, ~10x the disk of the reduced ones) are never stored. Where the sample is more than half the frames
    (small stores), or with ``keep_unreduced``, the full tokens are written first and reduced by
    :func:`~s2robot.datasets.token_reduction.reduce_features` (as are full tokens already cached), then deleted
    unless kept or there before. Both ways give the same tokens: the same fit frames, the same float16 rounding.
    ``augment_views`` K > 1: store K views per frame instead (view 0 the frame, views 1..K-1 shifted by up to
    ``augment_shift`` px, default :data:`~s2robot.datasets.view_augment.DEFAULT_SHIFT`, seeded by ``augment_seed``;
    see :mod:`~s2robot.datasets.view_augment`); with ``token_dim`` the PCA is fitted once on view 0 and applied
    to every view. K = 1 is the plain cache (same key, no extra work).

    ``encoder``: an object with ``encode(uint8 (B,H,W,3)) -> (B, N, D)``, ``config_hash``, ``config``, ``out_dim``,
    ``num_tokens``, ``grid``, ``num_prefix`` (an ``S2Encoder``); an ``nn.Module`` is moved to ``device``.
    ``cameras``: default every camera with a ``<cam>_image`` key. Already-finished frames are skipped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    augment = augment_spec(augment_views, augment_shift, augment_seed)
    dev = resolve_device(device)
    if isinstance(encoder, torch.nn.Module):
        encoder.to(dev)
    store = EpisodeStore.open(path, mode="a")
    try:  # an interrupted run keeps every finished batch (``progress``) and releases the store
        plan = _plan(store, encoder, cameras, batch_size, pool_grid, augment)
        done = reduced_key(plan.key, int(token_dim)) if token_dim and not keep_unreduced else None
        if done and "features" in store.group and set_is_complete(store.group["features"], done, plan.cams,
                                                                   store.n_steps):
            return done  # reduced before: its full tokens were deleted and are not needed
        had_full = "features" in store.group and plan.key in store.group["features"]
        # the fit sample is encoded twice on the direct path: where it is most of the store (a small one), the
        # full tokens are written instead, reduced, and then deleted (unless kept)
        rows = fit_rows(store.n_steps, plan.n_tok, len(plan.cams), seed=0)
        full_done = had_full and set_is_complete(store.group["features"], plan.key, plan.cams, store.n_steps)
        direct = bool(token_dim) and not keep_unreduced and not full_done and 2 * len(rows) <= store.n_steps
        if direct:
            key = _encode_reduced(store, encoder, dev, plan, int(token_dim), rows, progress)
        else:
            key = _encode_into(store, encoder, dev, plan, progress)
    finally:
        store.close()
    if token_dim and not direct:
        key = reduce_features(path, key, int(token_dim), progress=progress)
        if not keep_unreduced and not had_full:
            _delete_feature_set(path, plan.key)
    return key


def _delete_feature_set(path: StoreLike, key: str) -> None:
    """Remove ``features/<key>`` (full tokens this call wrote only to reduce them)."""
    store = EpisodeStore.open(path, mode="a")
    try:
        del store.group["features"][key]
    finally:
        store.close()


@dataclass(frozen=True)
class _CachePlan:
    """What one ``cache_features`` call encodes: cameras, feature key and token layout (N' tokens of D channels)."""

    cams: list[str]
    key: str
    n_prefix: int
    grid: int
    pool_grid: int | None
    n_tok: int
    d: int
    augment: AugmentSpec | None
    batch_size: int  # frames per encoder call (about batch_size images whatever K)

    def frame_shape(self, dim: int) -> tuple[int, ...]:
        """One frame's stored tokens: (N', dim), or (K, N', dim) with augmented views."""
        return (self.n_tok, dim) if self.augment is None else (self.augment.views, self.n_tok, dim)


def _plan(store: EpisodeStore, encoder: Any, cameras: Sequence[str] | None, batch_size: int,
          pool_grid: int | None, augment: AugmentSpec | None) -> _CachePlan:
    cams = list(cameras) if cameras is not None else [c for c in store.cameras if f"{c}_image" in store.spec]
    missing = [c for c in cams if f"{c}_image" not in store.spec]
    if missing:
        raise DatasetError(f"{describe(store.path)}: no image key for cameras {missing}; keys are {store.keys}")
    n_prefix, grid = int(encoder.num_prefix), int(encoder.grid)
    if pool_grid is not None and int(pool_grid) == grid:
        pool_grid = None  # the full grid is no pooling: same tokens, same key and attrs as pool_grid=None
    return _CachePlan(
        cams=cams, key=feature_hash_for(encoder, pool_grid, augment), n_prefix=n_prefix, grid=grid,
        pool_grid=None if pool_grid is None else int(pool_grid), n_tok=n_prefix + int(pool_grid or grid) ** 2,
        d=int(encoder.out_dim), augment=augment,
        batch_size=batch_size if augment is None else max(1, batch_size // augment.views),
    )


def _encode_into(store: EpisodeStore, encoder: Any, dev: torch.device, plan: _CachePlan, progress: bool) -> str:
    """The full-width tokens: (T, N', D) arrays, or (T, K, N', D) with augmented views."""
    group = _feature_group(store, encoder, plan)
    _write_tokens(store, encoder, dev, plan, group, progress)
    return plan.key


def _encode_reduced(store: EpisodeStore, encoder: Any, dev: torch.device, plan: _CachePlan, dim: int,
                    rows: np.ndarray, progress: bool) -> str:
    """The PCA-reduced tokens only: fit on the sample frames ``rows`` (:func:`fit_rows`), then encode, project and
    write every frame. A rerun after an interruption reuses the stored projection and continues from ``progress``."""
    if not 1 <= dim < plan.d:
        raise DatasetError(f"token_dim must be in [1, {plan.d}) for features/{plan.key} (D={plan.d}), got {dim}")
    feats, key = store.group.require_group("features"), reduced_key(plan.key, dim)
    group = feats[key] if key in feats else None
    if group is not None and (group.attrs.get("reduce", {}).get("source") != plan.key or "projection" not in group):
        del feats[key]  # a reduction that never got its projection written: redo it
        group = None
    if group is None:
        samples = [_encode_frames(store, encoder, dev, plan, c, rows) for c in plan.cams]
        proj, explained, n_fit = fit_projection(samples, dim)
        attrs = reduced_attrs(_feature_meta(encoder, plan), plan.key, dim, 0, explained, n_fit)
        group = create_reduced_group(feats, key, attrs, proj)
    _write_tokens(store, encoder, dev, plan, group, progress, projection=load_projection(group))
    return key


def _encode_frames(store: EpisodeStore, encoder: Any, dev: torch.device, plan: _CachePlan, cam: str,
                   rows: np.ndarray) -> np.ndarray:
    """Cached-form tokens (F, N', D) float16 of the frames ``rows`` of camera ``cam`` (no augmented views)."""
    images = f"data/{cam}_image"
    check_present(store, images)
    out = []
    with torch.inference_mode():
        for s in range(0, len(rows), plan.batch_size):
            frames = np.concatenate([read_steps(store, images, int(r), int(r) + 1, checked=True)
                                     for r in rows[s:s + plan.batch_size]])
            out.append(_encode_batch(encoder, dev, plan, frames).cpu().numpy())
    return np.concatenate(out)


def _encode_batch(encoder: Any, dev: torch.device, plan: _CachePlan, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) -> cached-form tokens (B, N', D) in ``STORED_DTYPE``, shape checked."""
    x = pin_if_cuda(torch.from_numpy(frames), dev)
    with autocast_for(dev):
        tok = encoder.encode(x)
    tok = tokens_as_cached(tok, num_prefix=plan.n_prefix, grid=plan.grid, pool_grid=plan.pool_grid,
                           dtype=STORED_DTYPE)
    if tuple(tok.shape[1:]) != (plan.n_tok, plan.d):
        raise DatasetError(f"encoder returned tokens {tuple(tok.shape)}, expected (B, {plan.n_tok}, {plan.d})")
    return tok


def _write_tokens(store: EpisodeStore, encoder: Any, dev: torch.device, plan: _CachePlan, group: zarr.Group,
                  progress: bool, projection: TokenProjection | None = None) -> None:
    """Encode the frames ``group``'s ``progress`` lacks and write them, batch by batch, projected when given."""
    n = store.n_steps
    dim = plan.d if projection is None else int(projection.out_dim)
    frame_shape = plan.frame_shape(dim)
    done = {c: min(int(group.attrs.get("progress", {}).get(c, 0)), n) for c in plan.cams}
    for c in plan.cams:
        if c not in group:
            group.create_array(
                c, shape=(n, *frame_shape), dtype=STORED_DTYPE, chunks=(1, *frame_shape),
                compressors=BloscCodec(**TOKEN_CODEC), fill_value=0, config=WRITE_ALL_CHUNKS,
            )
        elif group[c].shape[0] != n:
            group[c].resize((n, *frame_shape))
    todo = sum(n - done[c] for c in plan.cams)
    batch = plan.batch_size

    def read(name: str, s: int) -> np.ndarray:  # a missing/corrupt image chunk is an error, never black frames
        return read_steps(store, name, s, min(s + batch, n), checked=True)

    key = str(group.basename)
    with tqdm(total=todo, desc=f"cache {key}", unit="frame", disable=not progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        for c in plan.cams:
            images, out = f"data/{c}_image", group[c].with_config(WRITE_ALL_CHUNKS)
            check_present(store, images)
            starts = list(range(done[c], n, batch))
            nxt = pool.submit(read, images, starts[0]) if starts else None
            for i, s in enumerate(starts):
                frames = nxt.result()
                if i + 1 < len(starts):  # read the next batch while this one encodes
                    nxt = pool.submit(read, images, starts[i + 1])
                if plan.augment is not None:  # (B, H, W, 3) -> (B * K, H, W, 3), frame-major
                    frames = shifted_views(frames, view_offsets(plan.augment, np.arange(s, s + len(frames))),
                                           plan.augment.shift)
                tok = _encode_batch(encoder, dev, plan, frames)
                if projection is not None:  # exactly what reduce_features does to the stored full tokens
                    tok = tokens_as_cached(tok, num_prefix=0, grid=0, projection=projection, dtype=STORED_DTYPE)
                tok = tok.reshape(-1, *frame_shape)
                out[s : s + len(tok)] = tok.cpu().numpy()
                done[c] = s + len(tok)
                group.attrs["progress"] = {**group.attrs.get("progress", {}), c: done[c]}
                bar.update(len(tok))


def cached_feature_sets(store: EpisodeStore) -> dict[str, dict[str, Any]]:
    """``{key: attrs}`` of every ``features/<key>`` group, with ``shape`` per camera added."""
    if "features" not in store.group:
        return {}
    out = {}
    for key, g in store.group["features"].groups():
        info = dict(g.attrs)
        info["shapes"] = {c: tuple(a.shape) for c, a in g.arrays()}
        out[key] = info
    return out


def run(cfg) -> str:
    """CLI verb ``s2robot cache dataset=PATH encoder=NAME [batch_size=256 pool_grid=null token_dim=null
    keep_unreduced=false augment_views=1 augment_shift=null augment_seed=0 device=auto]``."""
    path = cfg.dataset.path
    if not path:
        raise SystemExit("s2robot cache: give the store, e.g. `s2robot cache dataset=data/demos.zarr encoder=...`")
    kwargs = OmegaConf.to_container(cfg.encoder, resolve=True)
    dev = resolve_device(cfg.get("device", "auto"))
    encoder = build_encoder(**kwargs, device=dev)
    cams = cfg.get("cameras")
    token_dim = cfg.get("token_dim")
    keep_unreduced = cfg.keep_unreduced  # configs/cache.yaml holds every key
    if not isinstance(keep_unreduced, bool):
        raise SystemExit(f"s2robot cache: keep_unreduced={keep_unreduced!r}: expected true or false")
    augment = augment_spec(cfg.get("augment_views"), cfg.get("augment_shift"), cfg.get("augment_seed"))
    aug_kw = augment.attrs() if augment else {}
    key = cache_features(
        path, encoder, cameras=list(cams) if cams else None, batch_size=int(cfg.batch_size),
        pool_grid=cfg.get("pool_grid"), device=dev, token_dim=token_dim,
        keep_unreduced=keep_unreduced,
        **{f"augment_{k}": v for k, v in aug_kw.items()},
    )
    what = f" (PCA-reduced to {int(token_dim)} channels)" if token_dim else ""
    what += f" ({augment.views} views per frame, shifts up to {augment.shift} px)" if augment else ""
    print(f"cached features{what}: {path}/features/{key}")
    print(f"train on them with: {train_command(path, cfg.encoder, cfg.get('pool_grid'))}"
          + (f" token_dim={int(token_dim)}" if token_dim else "")
          + "".join(f" dataset.augment_{k}={v}" for k, v in aug_kw.items()))
    return key


def _override_value(v: Any) -> str:
    """A value as a hydra command-line override: null, true, 3, [1,2], or a shell-quoted string."""
    if isinstance(v, str):
        return shlex.quote(v)
    return json.dumps(v, separators=(",", ":"))


def encoder_overrides(encoder_cfg: Any) -> list[str]:
    """``encoder=<name>`` plus ``encoder.<key>=<value>`` for every key that differs from the shipped
    ``configs/encoder/<name>.yaml``: the overrides that rebuild this exact encoder (same ``config_hash``). The
    ``engine`` is left out: it is how one machine computes the encoder, not which encoder it is."""
    enc = OmegaConf.to_container(encoder_cfg, resolve=True) if isinstance(encoder_cfg, DictConfig) else dict(encoder_cfg)
    shipped = configs_dir() / "encoder" / f"{enc.get('name')}.yaml"
    base = OmegaConf.to_container(OmegaConf.load(shipped)) if shipped.is_file() else {}
    out = [f"encoder={enc.get('name')}"]
    out += [f"encoder.{k}={_override_value(v)}" for k, v in enc.items()
            if k not in ("name", "engine") and base.get(k) != v]
    return out


def train_command(path: str, encoder_cfg: Any, pool_grid: int | None) -> str:
    """The ``s2robot train`` command that picks these cached features: the same encoder config and pooling."""
    parts = ["s2robot train", f"dataset={path}", *encoder_overrides(encoder_cfg)]
    if pool_grid is not None:
        parts.append(f"pool_grid={int(pool_grid)}")
    return " ".join(parts)


def cache_command(path: str, encoder_cfg: Any, pool_grid: int | None = None,
                  augment: dict[str, int] | None = None) -> str:
    """The ``s2robot cache`` command that caches (or finishes caching) features for exactly this encoder config
    (``augment``: a set's ``augment`` attrs ``{views, shift, seed}``, for an augmented-view set)."""
    pool = [f"pool_grid={int(pool_grid)}"] if pool_grid is not None else []
    aug = [f"augment_{k}={int(augment[k])}" for k in ("views", "shift", "seed")] if augment else []
    return " ".join(["s2robot cache", f"dataset={path}", *encoder_overrides(encoder_cfg), *pool, *aug])
