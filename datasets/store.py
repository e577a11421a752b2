"""``EpisodeStore``: demonstrations in one zarr v3 group, episodes concatenated in time.

Layout (see ``docs/datasets.md``)::

    <store>/
      data/<key>                 (T_total, *shape) per key: <cam>_image uint8 (T,H,W,3), proprio, action, ...
      meta/episode_ends          int64 (E,), exclusive end of each episode, strictly increasing
      features/<hash>/<camera>   float16 (T_total, N', D) cached encoder tokens (``feature_cache.py``)
      attrs: task, env_kwargs, fps, cameras, action_space, format_version, spec

``attrs["spec"]`` declares every data key's per-step ``shape`` and ``dtype``; it is fixed by the first appended
episode (or given to :meth:`EpisodeStore.create`) and checked on every open and append.

Crash safety: :meth:`EpisodeStore.append_episode` resizes and writes every data array first and records the
episode's end in ``meta/episode_ends`` last (the local store writes each chunk/metadata file atomically). An
episode exists only once its end is recorded, so a recording killed mid-episode leaves data past the last end;
opening such a store drops those steps with a warning (and, in a writable mode, truncates the arrays) and keeps
every finished episode.

Where a store lives: a local directory, a ``.zip`` file (read-only: zip entries cannot be rewritten, so a zip is
written once with :meth:`EpisodeStore.export`), a ``zarr.storage.MemoryStore`` (or any zarr ``Store`` object), or
any fsspec URL zarr supports (``s3://...``, ``memory://...``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec

FORMAT_VERSION = 1
ENDS_FILL = -1  # fill value of meta/episode_ends: a trailing -1 is an end whose write was interrupted
_KEY_RE = re.compile(r"^[A-Za-z0-9_]+$")

# Chunking/compression, chosen with benchmarks/bench_dataset.py (figures in docs/datasets.md).
IMAGE_CHUNK_FRAMES = 4  # images: 4 frames per chunk (a 2-frame obs window touches 1-2 chunks)
LOWDIM_CHUNK_BYTES = 1 << 20  # low-dim: ~1 MiB chunks (tens of thousands of steps), loaded whole into RAM
IMAGE_CODEC = dict(cname="zstd", clevel=5, shuffle="noshuffle")  # ~5x on render-like frames
LOWDIM_CODEC = dict(cname="zstd", clevel=3, shuffle="shuffle")
# zarr skips writing a chunk equal to the fill value by default, and reads an absent chunk as the fill value; every
# array this package writes stores every chunk, so an absent chunk is always lost data (``integrity.py``).
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}
ALL_CHUNKS_ATTR = "chunks_always_written"  # store attr: set by stores created with WRITE_ALL_CHUNKS

StoreLike = str | Path | Store


class DatasetError(ValueError):
    """A dataset store that is missing, malformed, or does not match what is being written to it."""


def is_image_key(key: str) -> bool:
    return key.endswith("_image")


def default_chunks(shape: tuple[int, ...], dtype: np.dtype, image: bool) -> tuple[int, ...]:
    """Chunk shape for an array of per-step ``shape``: frames for images, ~1 MiB along time for low-dim data."""
    if image:
        return (IMAGE_CHUNK_FRAMES, *shape)
    step_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return (max(1024, LOWDIM_CHUNK_BYTES // step_bytes), *shape)


def default_compressor(image: bool) -> BloscCodec:
    return BloscCodec(**(IMAGE_CODEC if image else LOWDIM_CODEC))


def describe(path: StoreLike) -> str:
    return repr(path) if isinstance(path, Store) else str(path)


def open_group(path: StoreLike, mode: str) -> zarr.Group:
    """Open a zarr v3 group at a directory, ``.zip`` file, zarr ``Store`` or fsspec URL.

    ``mode``: ``"r"`` (must exist, read-only), ``"r+"``/``"a"`` (must exist / may exist, writable), ``"w"`` (create,
    overwrite), ``"w-"`` (create, fail if present). Raises :class:`DatasetError` or ``FileNotFoundError`` naming the
    path.
    """
    if isinstance(path, Store):
        return zarr.open_group(store=path, mode=mode, zarr_format=3)
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        try:
            return zarr.open_group(text, mode=mode, zarr_format=3)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"dataset store not found at {text}: {e}") from e
    local = Path(text.removeprefix("file://")).expanduser()
    if local.suffix == ".zip":
        if mode != "r":
            raise DatasetError(
                f"{local}: zip stores are write-once and open read-only; record into a directory store and call "
                "EpisodeStore.export('<name>.zip') to pack it"
            )
        if not local.is_file():
            raise FileNotFoundError(f"dataset store not found: {local} is not a file")
        return zarr.open_group(store=zarr.storage.ZipStore(local, mode="r"), mode="r", zarr_format=3)
    if mode in ("r", "r+"):
        if not local.exists():
            raise FileNotFoundError(f"dataset store not found: {local} does not exist")
        if not local.is_dir():
            raise DatasetError(f"{local} is not a directory store (expected a zarr directory or a .zip file)")
    try:
        return zarr.open_group(str(local), mode=mode, zarr_format=3)
    except FileExistsError as e:
        raise FileExistsError(f"{local} already exists; pass overwrite=True to replace it") from e
    except PermissionError as e:
        raise DatasetError(f"cannot read dataset store {local}: {e}") from e
    except (FileNotFoundError, KeyError, ValueError) as e:  # zarr raises these for missing/foreign metadata
        raise DatasetError(f"{local} is not a zarr v3 dataset store ({type(e).__name__}: {e})") from e


class EpisodeStore:
    """Episodes of per-step arrays in one zarr group. Build with :meth:`create` or :meth:`open`."""

    def __init__(self, group: zarr.Group, path: StoreLike, writable: bool):
        self._group = group
        self._path = path
        self._writable = writable
        self._ends = np.zeros(0, dtype=np.int64)
        self._validate_and_recover()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: StoreLike,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        spec: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> EpisodeStore:
        """Create an empty store. ``attrs``: task, env_kwargs, fps, cameras, action_space (any JSON values).

        ``spec`` optionally declares keys up front: ``{key: {"shape": per-step shape, "dtype": str}}``; otherwise
        the first appended episode declares them.
        """
        group = open_group(path, "w" if overwrite else "w-")
        user = dict(attrs or {})
        user.update(format_version=FORMAT_VERSION, spec={}, **{ALL_CHUNKS_ATTR: True})
        group.attrs.update(user)
        group.create_group("data")
        meta = group.create_group("meta")
        meta.create_array(
            "episode_ends", shape=(0,), dtype="int64", chunks=(65536,), fill_value=ENDS_FILL,
            compressors=default_compressor(False),
        )
        store = cls(group, path, writable=True)
        for key, s in (spec or {}).items():
            store._declare(key, tuple(s["shape"]), np.dtype(s["dtype"]))
        return store

    @classmethod
    def open(cls, path: StoreLike, mode: str = "r") -> EpisodeStore:
        """Open and validate an existing store. ``mode``: ``"r"`` read-only, ``"a"``/``"r+"`` to append."""
        if mode not in ("r", "r+", "a"):
            raise ValueError(f"EpisodeStore.open mode must be 'r', 'r+' or 'a', got {mode!r}")
        group = open_group(path, "r" if mode == "r" else "r+")
        return cls(group, path, writable=mode != "r")

    # ------------------------------------------------------------------ validation
    def _validate_and_recover(self) -> None:
        where = describe(self._path)
        g = self._group
        if "format_version" not in g.attrs:
            raise DatasetError(f"{where}: not an s2robot dataset (group attrs lack 'format_version'); write demos "
                               "with EpisodeStore.create(path, attrs).append_episode(...) (docs/datasets.md), which "
                               "records format_version and each key's spec, rather than building the zarr group by hand")
        if int(g.attrs["format_version"]) > FORMAT_VERSION:
            raise DatasetError(
                f"{where}: format_version {g.attrs['format_version']} is newer than supported ({FORMAT_VERSION})"
            )
        try:
            ends_arr = g["meta/episode_ends"]
        except KeyError:
            raise DatasetError(f"{where}: missing meta/episode_ends (no episode boundaries recorded)") from None
        if not isinstance(ends_arr, zarr.Array) or ends_arr.ndim != 1 or ends_arr.dtype != np.int64:
            raise DatasetError(f"{where}: meta/episode_ends must be a 1-D int64 array")
        ends = np.asarray(ends_arr[:], dtype=np.int64)
        if len(ends) and ends[-1] == ENDS_FILL:  # the end's resize landed but its value did not
            warnings.warn(f"{where}: dropping an interrupted episode-end record", stacklevel=3)
            ends = ends[:-1]
            if self._writable:
                ends_arr.resize((len(ends),))
        if len(ends):
            bad = np.flatnonzero(np.diff(np.concatenate([[0], ends])) <= 0)
            if len(bad):
                i = int(bad[0])
                prev = 0 if i == 0 else int(ends[i - 1])
                raise DatasetError(
                    f"{where}: meta/episode_ends is not strictly increasing at index {i} ({prev} -> {int(ends[i])})"
                )
        n = int(ends[-1]) if len(ends) else 0
        spec = self.spec
        data = g["data"] if "data" in g else None
        present = set(data.array_keys()) if data is not None else set()
        missing = sorted(set(spec) - present)
        if missing:
            raise DatasetError(f"{where}: data/{missing[0]} is declared in attrs['spec'] but missing")
        undeclared = sorted(present - set(spec))
        if undeclared:
            raise DatasetError(f"{where}: data/{undeclared[0]} has no entry in attrs['spec']")
        longer = []
        for key in sorted(spec):
            arr = data[key]
            want_shape, want_dtype = tuple(spec[key]["shape"]), np.dtype(spec[key]["dtype"])
            if arr.dtype != want_dtype:
                raise DatasetError(f"{where}: data/{key} has dtype {arr.dtype}, spec declares {want_dtype}")
            if tuple(arr.shape[1:]) != want_shape:
                raise DatasetError(
                    f"{where}: data/{key} has per-step shape {tuple(arr.shape[1:])}, spec declares {want_shape}"
                )
            if arr.shape[0] < n:
                raise DatasetError(
                    f"{where}: keys have unequal lengths: data/{key} has {arr.shape[0]} steps but "
                    f"meta/episode_ends ends at {n}"
                )
            if arr.shape[0] > n:
                longer.append(arr)
        if longer:
            extra = max(a.shape[0] for a in longer) - n
            warnings.warn(
                f"{where}: data runs {extra} steps past the last recorded episode end ({n}); an interrupted "
                f"episode was dropped, {len(ends)} finished episodes kept",
                stacklevel=3,
            )
            if self._writable:
                for arr in longer:
                    arr.resize((n, *arr.shape[1:]))
        self._ends = ends

    # ------------------------------------------------------------------ properties
    @property
    def group(self) -> zarr.Group:
        """The underlying zarr group (``data/``, ``meta/``, ``features/``)."""
        return self._group

    @property
    def path(self) -> StoreLike:
        return self._path

    @property
    def spec(self) -> dict[str, dict[str, Any]]:
        """``{key: {"shape": [...], "dtype": str}}``: per-step shape and dtype of every data key."""
        return dict(self._group.attrs.get("spec", {}))

    @property
    def keys(self) -> list[str]:
        return sorted(self.spec)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    @property
    def episode_ends(self) -> np.ndarray:
        """int64 (E,): exclusive end step of each episode (a copy)."""
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends]))

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def cameras(self) -> list[str]:
        """Camera names: ``attrs["cameras"]`` if set, else the prefixes of ``*_image`` keys."""
        cams = self._group.attrs.get("cameras")
        return list(cams) if cams else [k[: -len("_image")] for k in self.keys if is_image_key(k)]

    def array(self, key: str) -> zarr.Array:
        """The zarr array ``data/<key>`` (may hold steps past ``n_steps`` when read-only; slice to ``n_steps``)."""
        if key not in self.spec:
            raise KeyError(f"no data key {key!r} in {describe(self._path)}; keys: {self.keys}")
        return self._group["data"][key]

    def episode_range(self, i: int) -> tuple[int, int]:
        """``(start, end)`` global step range of episode ``i`` (negative ``i`` counts from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for a store with {n} episodes")
        i %= n
        return (int(self._ends[i - 1]) if i > 0 else 0), int(self._ends[i])

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (T_i, *shape)}`` numpy arrays."""
        from .integrity import read_steps  # missing/corrupt chunks: an error naming them, never zeros

        start, end = self.episode_range(i)
        for k in keys or []:
            self.array(k)  # a KeyError naming the store's keys
        return {k: read_steps(self, f"data/{k}", start, end) for k in (keys or self.keys)}

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if not self._writable:
            raise DatasetError(f"{describe(self._path)} is open read-only; use EpisodeStore.open(path, mode='a')")

    def _declare(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if not _KEY_RE.match(key):
            raise DatasetError(f"data key {key!r} must match [A-Za-z0-9_]+")
        image = is_image_key(key)
        if image and (dtype != np.uint8 or len(shape) != 3 or shape[2] != 3):
            raise DatasetError(f"{key}: images must be uint8 (T, H, W, 3), got {dtype} (T, {', '.join(map(str, shape))})")
        self._group["data"].create_array(
            key, shape=(self.n_steps, *shape), dtype=dtype, chunks=default_chunks(shape, dtype, image),
            compressors=default_compressor(image), fill_value=0, config=WRITE_ALL_CHUNKS,
        )
        spec = self.spec
        spec[key] = {"shape": [int(d) for d in shape], "dtype": np.dtype(dtype).name}
        self._group.attrs["spec"] = spec

    def append_episode(self, episode: Mapping[str, Any]) -> int:
        """Append one episode ``{key: (T, *shape) array}`` (all keys, equal T >= 1); returns its index.

        The first episode declares the keys (unless ``spec`` was given to :meth:`create`); later episodes must
        carry exactly the declared keys with the declared per-step shapes. Data arrays are written first and the
        episode's end last, so an interrupted append leaves no half episode behind.
        """
        self._check_writable()
        arrays = {k: np.asarray(v) for k, v in episode.items()}
        if not arrays:
            raise DatasetError("append_episode: empty episode dict")
        lengths = {k: (a.shape[0] if a.ndim else -1) for k, a in arrays.items()}
        t = next(iter(lengths.values()))
        if any(v != t for v in lengths.values()) or t < 1:
            raise DatasetError(f"append_episode: keys must share one length T >= 1, got {lengths}")
        spec = self.spec
        if not spec:
            for k in sorted(arrays):
                self._declare(k, arrays[k].shape[1:], arrays[k].dtype)
            spec = self.spec
        if set(arrays) != set(spec):
            missing, extra = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
            raise DatasetError(f"append_episode: keys differ from the store's spec (missing {missing}, unknown {extra})")
        for k, a in arrays.items():
            want_shape, want_dtype = tuple(spec[k]["shape"]), np.dtype(spec[k]["dtype"])
            if a.shape[1:] != want_shape:
                raise DatasetError(f"append_episode: {k} per-step shape {a.shape[1:]} != declared {want_shape}")
            if a.dtype != want_dtype:
                if not np.can_cast(a.dtype, want_dtype, casting="same_kind") or is_image_key(k):
                    raise DatasetError(f"append_episode: {k} dtype {a.dtype} != declared {want_dtype}")
                arrays[k] = a.astype(want_dtype)
        start, end = self.n_steps, self.n_steps + t
        data = self._group["data"]
        for k in sorted(arrays):  # 1) data
            arr = data[k].with_config(WRITE_ALL_CHUNKS)
            arr.resize((end, *arr.shape[1:]))
            arr[start:end] = arrays[k]
        ends_arr = self._group["meta/episode_ends"]  # 2) the end, last
        e = len(self._ends)
        ends_arr.resize((e + 1,))
        ends_arr[e] = end
        self._ends = np.append(self._ends, np.int64(end))
        return e

    def export(self, dst: StoreLike, overwrite: bool = False) -> None:
        """Copy this store (finished episodes and features) to ``dst``: a directory, a ``.zip`` (written once),
        a zarr ``Store`` or an fsspec URL. Every chunk is written once, so zip output has no duplicate entries."""
        text = str(dst)
        zip_out = not isinstance(dst, Store) and text.endswith(".zip")
        if zip_out:
            if Path(text).exists() and not overwrite:
                raise FileExistsError(f"{text} already exists; pass overwrite=True to replace it")
            Path(text).unlink(missing_ok=True)
            target: StoreLike = zarr.storage.ZipStore(text, mode="w")
        else:
            target = open_group(dst, "w" if overwrite else "w-").store
        attrs = {k: v for k, v in self._group.attrs.items() if k != "verified"}  # a copy is verified on its own
        out = zarr.create_group(store=target, attributes=attrs, overwrite=True, zarr_format=3)
        try:
            n = self.n_steps
            members = sorted(self._group.members(max_depth=None), key=lambda m: m[0].count("/"))
            for name, node in members:  # parents before children
                if isinstance(node, zarr.Group):
                    out.create_group(name, attributes=dict(node.attrs))
                    continue
                length = len(self._ends) if name == "meta/episode_ends" else min(node.shape[0], n)
                copy = out.create_array(
                    name, shape=(length, *node.shape[1:]), dtype=node.dtype, chunks=node.chunks,
                    compressors=node.compressors, fill_value=node.fill_value, attributes=dict(node.attrs),
                    config=WRITE_ALL_CHUNKS,
                )
                step = max(node.chunks[0], (64 << 20) // max(1, node.nbytes // max(1, node.shape[0])))
                step -= step % node.chunks[0]
                for s in range(0, length, step):
                    copy[s : min(s + step, length)] = node[s : min(s + step, length)]
        finally:
            if zip_out:
                out.store.close()

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the store (needed for zip files)."""
        store = self._group.store
        if hasattr(store, "close"):
            store.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return f"EpisodeStore({describe(self._path)!s}, episodes={self.n_episodes}, steps={self.n_steps}, keys={self.keys})"
