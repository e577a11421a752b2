"""Chunk-level integrity of a store: reads never substitute zarr fill values for data that was written.

zarr 3 reads a chunk that is absent from storage as the array's fill value (0), and its default
``write_empty_chunks=False`` skips writing chunks that equal the fill value. So a deleted chunk file of
``data/action`` would train on all-zero actions without a word. This package therefore

* writes every chunk, even an all-zero one (``store.WRITE_ALL_CHUNKS`` on every array it creates or appends to; stores
  created this way carry ``attrs["chunks_always_written"] = true``), and
* treats a chunk of a finished episode that is missing, or that cannot be decoded, as an error naming the key, the
  chunk, its steps and the episodes it covers (:class:`ChunkError`).

Stores written before that rule (no ``chunks_always_written`` attr) may legitimately lack all-zero chunks; for them
a missing chunk of a bool/int key (``success``, ``episode_seed``) reads as 0 as before, while a missing chunk of a
float or image key or of cached features is still an error (render frames, actions and tokens are never a whole
chunk of exact zeros).

:func:`missing_chunks` lists chunk files (no decoding), the cheap check ``train`` runs before step 0 with
:func:`preflight`; ``s2robot dataset verify`` (``verify.py``) decodes every chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import struct

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .store import ALL_CHUNKS_ATTR, DatasetError, EpisodeStore, describe, is_image_key


class ChunkError(DatasetError):
    """A chunk of written data is missing from storage or cannot be decoded."""


def blosc_frame_problem(raw: bytes, expected_nbytes: int) -> str | None:
    """Why a Blosc frame is damaged, or None. Blosc trusts its 16-byte header and, for an uncompressible (memcpy)
    frame, returns whatever lies past a truncated buffer; so compare the header's sizes with the bytes at hand."""
    if len(raw) < 16:
        return f"{len(raw)} bytes, shorter than a Blosc header"
    nbytes, _, cbytes = struct.unpack_from("<III", raw, 4)
    if cbytes != len(raw):
        return f"truncated or padded: the Blosc header says {cbytes} bytes, the chunk has {len(raw)}"
    if nbytes != expected_nbytes:
        return f"decodes to {nbytes} bytes, a chunk holds {expected_nbytes}"
    return None


def frames_per_chunk(arr: zarr.Array) -> int:
    return int(arr.chunks[0])


def episodes_covering(ends: np.ndarray, lo: int, hi: int) -> str:
    """``"episodes 3-7"`` / ``"episode 3"``: the episodes with steps in [lo, hi) given exclusive ``ends`` (E,)."""
    ends = np.asarray(ends, dtype=np.int64)
    if not len(ends) or lo >= int(ends[-1]):
        return "no finished episode"
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends, min(hi, int(ends[-1])) - 1, side="right"))
    return f"episode {first}" if first == last else f"episodes {first}-{last}"


def chunk_message(where: str, name: str, chunk: int, k: int, ends: np.ndarray, problem: str) -> str:
    """One line naming store, array, chunk, its steps and the episodes it covers."""
    lo = chunk * k
    hi = min(lo + k, int(ends[-1]) if len(ends) else lo + k)
    return f"{where}: {name} chunk {chunk} (steps {lo}-{hi - 1}, {episodes_covering(ends, lo, hi)}) {problem}"


def _chunk_keys(arr: zarr.Array, time_chunk: int) -> list[str]:
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    rest = [range(n) for n in arr.cdata_shape[1:]]
    return [_prefix(arr) + encode((time_chunk, *c)) for c in itertools.product(*rest)]


def _prefix(arr: zarr.Array) -> str:
    return f"{arr.path}/" if arr.path else ""


def stored_keys(arr: zarr.Array) -> set[str]:
    """Keys of the chunk objects of ``arr`` that exist in its store (one listing, nothing decoded)."""

    async def listing() -> set[str]:
        return {k async for k in arr.store.list_prefix(_prefix(arr))}

    return sync(listing())


def missing_chunks(arr: zarr.Array, n_steps: int) -> list[int]:
    """Time-chunk indices overlapping steps [0, n_steps) with at least one chunk object absent from storage."""
    if n_steps <= 0:
        return []
    if getattr(arr, "shards", None) is not None:  # sharded arrays: check the shard objects instead
        return []
    have = stored_keys(arr)
    n_chunks = -(-int(n_steps) // frames_per_chunk(arr))
    return [c for c in range(n_chunks) if any(key not in have for key in _chunk_keys(arr, c))]


def damaged_chunks(arr: zarr.Array, chunks: list[int]) -> dict[int, str]:
    """``{chunk: problem}`` for time-chunks of a Blosc-compressed ``arr`` whose stored frame is damaged (header vs
    size; see :func:`blosc_frame_problem`). Reads the raw bytes, decodes nothing; other codecs: ``{}``."""
    if not any(isinstance(c, BloscCodec) for c in arr.compressors) or len(arr.compressors) != 1:
        return {}
    expected = int(np.prod(arr.chunks)) * np.dtype(arr.dtype).itemsize
    keys = {c: _chunk_keys(arr, c) for c in chunks}

    async def fetch(key: str):
        return await arr.store.get(key, prototype=default_buffer_prototype())

    async def fetch_all():
        return await asyncio.gather(*(fetch(k) for ks in keys.values() for k in ks))

    raws = iter(sync(fetch_all()))
    out = {}
    for c, ks in keys.items():
        for _ in ks:
            buf = next(raws)
            problem = None if buf is None else blosc_frame_problem(buf.to_bytes(), expected)
            if problem and c not in out:
                out[c] = problem
    return out


def fill_is_legacy_zero(store_attrs: dict, arr: zarr.Array) -> bool:
    """Whether a missing chunk of ``arr`` may be an all-zero chunk skipped by a pre-``chunks_always_written`` writer."""
    return not store_attrs.get(ALL_CHUNKS_ATTR, False) and np.dtype(arr.dtype).kind in "biu"


def check_present(store: EpisodeStore, name: str, n_steps: int | None = None) -> None:
    """Raise :class:`ChunkError` if a chunk of ``store.group[name]`` within the finished steps is missing."""
    arr = store.group[name]
    n = store.n_steps if n_steps is None else n_steps
    if fill_is_legacy_zero(store.attrs, arr):
        return
    gone = missing_chunks(arr, n)
    if gone:
        more = f" (and {len(gone) - 1} more chunks)" if len(gone) > 1 else ""
        raise ChunkError(chunk_message(describe(store.path), name, gone[0], frames_per_chunk(arr), store.episode_ends,
                                       f"is missing from storage{more}; the data written there is lost, so it is "
                                       f"not read as zeros (`s2robot dataset verify {describe(store.path)}` "
                                       "lists every problem)"))


def read_steps(store: EpisodeStore, name: str, lo: int, hi: int, checked: bool = False) -> np.ndarray:
    """``store.group[name][lo:hi]`` with missing or undecodable chunks reported as :class:`ChunkError`.

    ``checked``: the caller already ran :func:`check_present` for this array.
    """
    arr = store.group[name]
    if not checked:
        check_present(store, name, min(hi, store.n_steps))
    k = frames_per_chunk(arr)
    for c, problem in sorted(damaged_chunks(arr, list(range(lo // k, -(-hi // k)))).items())[:1]:
        raise ChunkError(chunk_message(describe(store.path), name, c, k, store.episode_ends, f"cannot be decoded ({problem})"))
    try:
        return np.asarray(arr[lo:hi])
    except Exception as e:  # noqa: BLE001 - codec errors come in many types; name the chunk that fails
        for c in range(lo // k, -(-hi // k)):
            try:
                arr[c * k : min((c + 1) * k, arr.shape[0])]
            except Exception as ce:  # noqa: BLE001
                raise ChunkError(chunk_message(describe(store.path), name, c, k, store.episode_ends,
                                               f"cannot be decoded ({type(ce).__name__}: {ce})")) from None
        raise DatasetError(f"{describe(store.path)}: reading {name}[{lo}:{hi}] failed ({type(e).__name__}: {e})") from e


def _feature_arrays(store: EpisodeStore, feature_hash: str | None) -> list[str]:
    if "features" not in store.group:
        return []
    sets = [feature_hash] if feature_hash else list(store.group["features"].group_keys())
    out = []
    for key in sets:
        if f"features/{key}" in store.group:
            out += [f"features/{key}/{c}" for c, _ in store.group[f"features/{key}"].arrays()]
    return sorted(out)


def preflight(store: EpisodeStore | str, keys: list[str] | None = None, feature_hash: str | None = None) -> None:
    """The cheap check before training: every chunk present, float data keys finite. Raises :class:`DatasetError`.

    ``keys``: data keys to check (default all); image keys are checked by listing only (nothing decoded), low-dim
    float keys are read and must be finite. ``feature_hash``: the cached feature set training reads (its chunks are
    listed, not decoded). Costs one listing per array plus a read of the low-dim keys.
    """
    if not isinstance(store, EpisodeStore):
        with EpisodeStore.open(store, mode="r") as opened:
            return preflight(opened, keys, feature_hash)
    keys = list(keys) if keys is not None else store.keys
    names = [f"data/{k}" for k in keys] + (_feature_arrays(store, feature_hash) if feature_hash else [])
    for name in names:
        check_present(store, name, _finished_steps(store, name))
    for key in keys:
        if is_image_key(key) or np.dtype(store.array(key).dtype).kind != "f":
            continue
        values = read_steps(store, f"data/{key}", 0, store.n_steps, checked=True)
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            t = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                f"{describe(store.path)}: data/{key} has {int(bad.sum())} steps with NaN/inf values, the first at "
                f"step {t} ({episodes_covering(store.episode_ends, t, t + 1)}); fix or drop those episodes"
            )
    return None


def _finished_steps(store: EpisodeStore, name: str) -> int:
    """Steps of ``name`` that hold written data: all finished steps, or a feature array's cached progress."""
    if not name.startswith("features/"):
        return store.n_steps
    group_path, cam = name.rsplit("/", 1)
    done = int(store.group[group_path].attrs.get("progress", {}).get(cam, 0))
    return min(done, store.n_steps)
