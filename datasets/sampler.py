"""``SequenceDataset``: fixed-length training windows over an :class:`EpisodeStore`.

A window starting at step ``s`` of an episode of length ``L`` covers steps ``s .. s+horizon-1``; starts run from
``-pad_before`` to ``L - horizon + pad_after`` with ``pad_before = n_obs_steps - 1`` and ``pad_after`` (default
``horizon - n_obs_steps``, the most allowed); steps outside the episode repeat its first/last frame (edge padding).
With the default every frame of an episode is the current (last) observation of some window, the last ones with
their final action repeated. Diffusion Policy's rule, ``pad_after = n_action_steps - 1`` (a window's executed actions
are all real steps), never conditions on an episode's last ``horizon - n_obs_steps - n_action_steps + 1`` frames
(7 for horizon 16, 2 obs, 8 actions): on stack_cubes, whose demos end one step after the gripper opens, its
diffusion policy never learnt to release (docs/policies.md, point 6). For a BC chunk (horizon = n_obs_steps - 1 +
n_action_steps) the two rules are the same.
Observation keys are read only for the first ``n_obs_steps`` steps of a window; ``action`` for all ``horizon``.

All window indices are computed once with numpy (no Python loop over episodes). Reads are batched: a batch of
windows (``get_batch``, ``__getitems__``) gathers every needed frame of a key in one call, each chunk read and
decoded once (:class:`~s2robot.datasets.reader.FrameReader`, which bypasses zarr's ~1 ms per-call indexing
overhead for local stores). Small low-dim arrays are held in RAM (loaded lazily in each process); cached tokens are
loaded into RAM once when they fit ``token_cache_bytes`` (then a batch is a numpy gather, no chunk decoding), else
they stream from the store like images. The store is opened lazily per process, so DataLoader workers never receive a copy.

Augmented views: a feature set cached with ``augment_views=K`` (``features/<key>`` arrays (T, K, N, D), see
:mod:`.view_augment`) gives the same items; ``get_batch(indices, views)`` picks, per window and per camera, which
view all ``n_obs_steps`` frames of the window read (default view 0, the un-augmented frame: what validation uses).
Training draws the views with :func:`draw_views` (its sampler yields ``(window, view, ...)`` rows, which
:class:`BatchView` hands to :meth:`get_batch`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .integrity import fill_is_legacy_zero, read_steps
from .reader import FrameReader
from .store import DatasetError, EpisodeStore, StoreLike, describe, is_image_key

LOWDIM_CACHE_BYTES = 256 << 20
TOKEN_CACHE_BYTES = 4 << 30


def split_episodes(n_episodes: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episode indices into (train, val); val gets round(n*ratio) episodes, at least 1 when
    ``val_ratio > 0`` and at most ``n - 1``."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n_val = 0 if val_ratio == 0 or n_episodes < 2 else min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def window_index(
    episode_starts: np.ndarray, episode_lengths: np.ndarray, horizon: int, pad_before: int, pad_after: int
) -> np.ndarray:
    """Every window as a row ``(episode_start, episode_length, relative_start)``, int64 (W, 3), vectorised.

    ``relative_start`` ranges over ``[-pad_before, L - horizon + pad_after]`` for each episode of length ``L``.
    """
    starts = np.asarray(episode_starts, dtype=np.int64)
    lengths = np.asarray(episode_lengths, dtype=np.int64)
    counts = np.maximum(lengths - horizon + pad_before + pad_after + 1, 0)
    total = int(counts.sum())
    first = np.repeat(np.cumsum(counts) - counts, counts)
    rel = np.arange(total, dtype=np.int64) - first - pad_before
    return np.stack([np.repeat(starts, counts), np.repeat(lengths, counts), rel], axis=1)


def window_frames(windows: np.ndarray, length: int) -> np.ndarray:
    """Global step indices, int64 (W, length), of the first ``length`` steps of each window, edge-padded."""
    t = windows[:, 2:3] + np.arange(length, dtype=np.int64)[None]
    return windows[:, 0:1] + np.clip(t, 0, windows[:, 1:2] - 1)


class SequenceDataset(Dataset):
    """Windows of ``horizon`` steps: ``ds[i] -> {obs_key: (n_obs_steps, ...), "action": (horizon, A)}`` (torch).

    Args:
        path: the store (directory, ``.zip``, zarr ``Store`` or fsspec URL) or an open :class:`EpisodeStore`.
        horizon, n_obs_steps, n_action_steps: window geometry (see module docstring).
        obs_keys: observation keys; default every ``<cam>_image`` key and ``proprio``.
        feature_hash: a ``features/<hash>`` key written by ``cache_features``: each ``<cam>_image`` obs key is
            replaced by ``<cam>_tokens`` float32 (n_obs_steps, N, D) read from the stored float16 tokens.
        split: ``"train"``, ``"val"`` or ``"all"``; episodes are split with ``val_ratio`` and ``seed``.
        lowdim_cache_bytes: low-dim keys whose total size is below this are held in RAM (per process).
        token_cache_bytes: cached token arrays (``features/<hash>``) whose total size is at most this are loaded
            into RAM once per process (float16 as stored, all K views of an augmented set); 0 streams them from the
            store (an augmented set decodes a frame's K views together, one chunk, and keeps the chosen one).
        pad_after: edge-padded steps allowed past an episode's end (module docstring); None: ``horizon - n_obs_steps``.
    Items: images uint8 (T_obs, H, W, 3); tokens float32 (T_obs, N, D); other keys float32. ``augment_views``:
    K of the feature set (1 for a plain set); ``token_keys``: the ``<cam>_tokens`` keys, the columns of ``views``.
    """

    def __init__(
        self,
        path: StoreLike | EpisodeStore,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        obs_keys: Sequence[str] | None = None,
        feature_hash: str | None = None,
        split: str = "train",
        val_ratio: float = 0.1,
        seed: int = 0,
        action_key: str = "action",
        lowdim_cache_bytes: int = LOWDIM_CACHE_BYTES,
        token_cache_bytes: int = TOKEN_CACHE_BYTES,
        pad_after: int | None = None,
    ):
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon:
            raise ValueError(
                f"need 1 <= n_obs_steps ({n_obs_steps}) <= horizon ({horizon}) and 1 <= n_action_steps "
                f"({n_action_steps}) <= horizon"
            )
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        store = path if isinstance(path, EpisodeStore) else EpisodeStore.open(path, mode="r")
        self.path = store.path
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.pad_before = n_obs_steps - 1
        self.pad_after = horizon - n_obs_steps if pad_after is None else int(pad_after)
        if not 0 <= self.pad_after <= horizon - n_obs_steps:
            raise ValueError(f"pad_after={pad_after} is not in [0, horizon - n_obs_steps = {horizon - n_obs_steps}]")
        self.split, self.val_ratio, self.seed = split, val_ratio, seed
        self.action_key = action_key
        self.feature_hash = feature_hash
        if action_key not in store.spec:
            raise DatasetError(f"{describe(self.path)}: no {action_key!r} key; keys are {store.keys}")

        keys = list(obs_keys) if obs_keys is not None else [k for k in store.keys if is_image_key(k) or k == "proprio"]
        self._sources: dict[str, str] = {}  # output key -> group path
        for k in keys:
            if feature_hash is not None and is_image_key(k):
                k = k[: -len("_image")] + "_tokens"
            self._sources[k] = self._source_path(store, k)
        self._sources[action_key] = f"data/{action_key}"
        self.obs_keys = [k for k in self._sources if k != action_key]
        self.token_keys = [k for k in self.obs_keys if self._sources[k].startswith("features/")]
        augment = store.group[f"features/{feature_hash}"].attrs.get("augment") if self.token_keys else None
        self.augment_views = int(augment["views"]) if augment else 1

        train, val = split_episodes(store.n_episodes, val_ratio, seed)
        self.episodes = {"train": train, "val": val, "all": np.arange(store.n_episodes)}[split]
        lengths = store.episode_lengths
        starts = store.episode_ends - lengths
        self.windows = window_index(starts[self.episodes], lengths[self.episodes], horizon,
                                    self.pad_before, self.pad_after)
        spec = store.spec
        lowdim_bytes = sum(
            store.n_steps * int(np.prod(spec[p[5:]]["shape"], dtype=np.int64)) * np.dtype(spec[p[5:]]["dtype"]).itemsize
            for p in self._sources.values() if p.startswith("data/") and not is_image_key(p[5:])
        )
        self._cache_lowdim = lowdim_bytes <= lowdim_cache_bytes
        token_bytes = sum(
            int(np.prod(store.group[p].shape, dtype=np.int64)) * np.dtype(store.group[p].dtype).itemsize
            for p in self._sources.values() if p.startswith("features/")
        )
        self.tokens_in_ram = 0 < token_bytes <= token_cache_bytes
        self.n_steps = store.n_steps
        view_axis = {k: int(self.augment_views > 1 and k in self.token_keys) for k in self._sources}
        self._shapes = {k: tuple(store.group[p].shape[1 + view_axis[k]:]) for k, p in self._sources.items()}
        self._store: EpisodeStore | None = store
        self._pid = os.getpid()
        self._arrays: dict[str, Any] = {}

    def _source_path(self, store: EpisodeStore, key: str) -> str:
        if key.endswith("_tokens"):
            if self.feature_hash is None:
                raise DatasetError(f"obs key {key!r} needs feature_hash (run `s2robot cache` first)")
            cam = key[: -len("_tokens")]
            where = f"features/{self.feature_hash}"
            if where not in store.group:
                have = list(store.group["features"].group_keys()) if "features" in store.group else []
                raise DatasetError(
                    f"{describe(store.path)}: no cached features {self.feature_hash!r} (have {have}); run "
                    f"`s2robot cache dataset=... encoder=...` with the matching encoder"
                )
            feats = store.group[where]
            if cam not in feats:
                raise DatasetError(f"{describe(store.path)}: no {where}/{cam}; rerun the cache for camera {cam!r}")
            done = int(feats.attrs.get("progress", {}).get(cam, 0))
            if done < store.n_steps or feats[cam].shape[0] < store.n_steps:
                raise DatasetError(
                    f"{describe(store.path)}: {where}/{cam} covers {done} of {store.n_steps} steps (interrupted, or "
                    f"episodes appended after caching); finish it with `{_cache_command(store, feats)}`"
                )
            return f"{where}/{cam}"
        if key not in store.spec:
            raise DatasetError(f"{describe(store.path)}: no data key {key!r}; keys are {store.keys}")
        return f"data/{key}"

    # ------------------------------------------------------------------ lazy per-process state
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"], state["_arrays"] = None, {}
        return state

    def _in_ram(self, key: str) -> bool:
        """Whether ``key`` is held in RAM whole (low-dim keys, tokens within ``token_cache_bytes``)."""
        name = self._sources[key]
        return ((self._cache_lowdim and name.startswith("data/") and not is_image_key(key))
                or (self.tokens_in_ram and name.startswith("features/")))

    def load_into_ram(self, share_with: "SequenceDataset | None" = None) -> None:
        """Read now, in this process, every key held in RAM (:meth:`_in_ram`).

        DataLoader workers forked afterwards share these arrays copy-on-write (nothing writes to them) instead of
        each reading its own copy, so the RAM budgets hold per training, not per worker. ``share_with``: another
        split of the same store (train / val) whose loaded arrays are reused rather than read again.
        """
        for key, name in self._sources.items():
            if not self._in_ram(key) or key in self._arrays:
                continue
            other = share_with._arrays.get(key) if share_with is not None and share_with.path == self.path else None
            if isinstance(other, np.ndarray) and share_with._sources.get(key) == name:
                self._arrays[key] = other
            else:
                self._array(key)

    def _array(self, key: str) -> FrameReader | np.ndarray:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles; RAM arrays are shared
            self._arrays = {k: a for k, a in self._arrays.items() if isinstance(a, np.ndarray)}
            self._store, self._pid = None, os.getpid()
        arr = self._arrays.get(key)
        if arr is None:
            if self._store is None:
                self._store = EpisodeStore.open(self.path, mode="r")
            store, name = self._store, self._sources[key]
            if self._in_ram(key) and name.startswith("data/"):
                arr = read_steps(store, name, 0, self.n_steps)
            elif self._in_ram(key):
                reader = FrameReader(store.group[name], describe(store.path), store.episode_ends,
                                     allow_missing=fill_is_legacy_zero(store.attrs, store.group[name]))
                arr = reader.read(np.arange(self.n_steps))  # once: batches become numpy gathers
            else:
                arr = FrameReader(store.group[name], describe(store.path), store.episode_ends,
                                  allow_missing=fill_is_legacy_zero(store.attrs, store.group[name]))
            self._arrays[key] = arr
        return arr

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.windows)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-step shape of every returned key (tokens: (N, D))."""
        return dict(self._shapes)

    def get_batch(self, indices: Sequence[int] | np.ndarray, views: np.ndarray | None = None
                  ) -> dict[str, torch.Tensor]:
        """Windows ``indices`` as a batch: ``{obs_key: (B, n_obs_steps, ...), action: (B, horizon, A)}``.

        ``views``: int (B, len(token_keys)) view of each window's tokens per camera, in ``[0, augment_views)``
        (default: view 0 everywhere).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window index out of range for a dataset of {len(self)} windows")
        if views is not None:
            views = np.asarray(views, dtype=np.int64).reshape(len(idx), len(self.token_keys))
            if views.size and (views.min() < 0 or views.max() >= self.augment_views):
                raise IndexError(f"view index out of range for a feature set of {self.augment_views} views")
        win = self.windows[idx]
        obs_frames = window_frames(win, self.n_obs_steps)
        out = {}
        for key in self.obs_keys:
            if self.augment_views > 1 and key in self.token_keys:
                v = views[:, self.token_keys.index(key)] if views is not None else np.zeros(len(idx), np.int64)
                x = read_views(self._array(key), obs_frames, v)
            else:
                x = read_frames(self._array(key), obs_frames)
            out[key] = torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.float32, copy=False))
        act = read_frames(self._array(self.action_key), window_frames(win, self.horizon))
        out[self.action_key] = torch.from_numpy(act.astype(np.float32, copy=False))
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # view 0
        return {k: v[0] for k, v in self.get_batch([i]).items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """Batched fetch used by ``DataLoader`` (one read per key for the whole batch)."""
        batch = self.get_batch(indices)
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    # ------------------------------------------------------------------ helpers for training
    def lowdim_data(self, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every step of this split's episodes for low-dim ``keys`` (default: low-dim obs keys + action),
        float32 (T, D): what :meth:`Normalizer.fit` expects."""
        keys = list(keys) if keys is not None else [
            k for k in self._sources if not is_image_key(k) and not k.endswith("_tokens")
        ]
        store = self._store or EpisodeStore.open(self.path, mode="r")
        ends = store.episode_ends
        starts = ends - store.episode_lengths
        steps = np.concatenate([np.arange(starts[e], ends[e]) for e in self.episodes]) if len(self.episodes) else \
            np.zeros(0, dtype=np.int64)
        out = {}
        for k in keys:
            if k not in self._sources:
                store.array(k)  # a KeyError naming the store's keys
            name = f"data/{k}" if k not in self._sources else self._sources[k]
            out[k] = read_steps(store, name, 0, self.n_steps).astype(np.float32, copy=False)[steps]
        return out


def _cache_command(store: EpisodeStore, feats: Any) -> str:
    from .feature_cache import cache_command

    return cache_command(describe(store.path), feats.attrs.get("encoder_config") or {}, feats.attrs.get("pool_grid"),
                         feats.attrs.get("augment"))


def read_frames(source: FrameReader | np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``source[frames]`` for an int index array of any shape (a RAM array or a :class:`FrameReader`)."""
    if isinstance(source, np.ndarray):
        return source[frames.reshape(-1)].reshape(*frames.shape, *source.shape[1:])
    return source.read(frames)


def read_views(source: FrameReader | np.ndarray, frames: np.ndarray, views: np.ndarray) -> np.ndarray:
    """View ``views[b]`` of every frame of window ``b``: ``frames`` int (B, T), ``views`` int (B,), ``source`` a
    (T_total, K, N, D) array or reader -> (B, T, N, D)."""
    if isinstance(source, np.ndarray):  # in RAM: gather only the chosen views
        return source[frames, views[:, None]]
    x = source.read(frames)  # (B, T, K, N, D): a frame's K views are one chunk
    return x[np.arange(len(frames))[:, None], np.arange(frames.shape[1])[None], views[:, None]]


def draw_views(seed: int, epoch: int, rank: int, n_windows: int, n_views: int, n_cameras: int) -> np.ndarray:
    """The training views of one epoch: int64 (n_windows, n_cameras) in ``[0, n_views)``, uniform and independent
    per window and camera, a pure function of ``(seed, epoch, rank)`` (so a resumed run draws the same ones)."""
    rng = np.random.default_rng([int(seed), int(epoch), int(rank), VIEW_STREAM])
    return rng.integers(0, n_views, size=(n_windows, n_cameras), dtype=np.int64)


VIEW_STREAM = 0x76696577  # "view": keeps the view draws apart from other streams seeded by (seed, epoch, rank)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-window dicts into a batch dict (same as ``default_collate`` for these items)."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def make_loader(
    dataset: SequenceDataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = True,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` that fetches whole batches with :meth:`SequenceDataset.get_batch` (one read per key per
    batch). Workers open the store lazily; ``persistent_workers`` keeps their handles and RAM caches alive."""
    gen = torch.Generator().manual_seed(seed)
    base = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        BatchView(dataset), sampler=BatchSampler(base, batch_size, drop_last), batch_size=None,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
    )


class BatchView(Dataset):
    """Maps a list of window indices to one batch dict (so the DataLoader does no per-item collate)."""

    def __init__(self, dataset: SequenceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int] | list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """``indices``: window indices, or ``(window, view_cam0, view_cam1, ...)`` rows (training's sampler)."""
        if len(indices) and isinstance(indices[0], tuple):
            rows = np.asarray(indices, dtype=np.int64)
            return self.dataset.get_batch(rows[:, 0], views=rows[:, 1:])
        return self.dataset.get_batch(indices)
