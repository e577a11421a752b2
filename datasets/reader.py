"""``FrameReader``: fast gathers of frames (axis 0) from a zarr v3 array.

zarr's general indexing machinery costs about 1 ms per call on CPU (event-loop round trip, selection planning),
while reading and Blosc-decoding one 128x128 frame chunk costs tens of microseconds. Training draws thousands of
random short windows per second, so for the layout this package writes (a ``LocalStore``, a regular chunk grid
that splits only the time axis, default ``c/...`` chunk keys, codecs ``bytes`` [+ ``blosc``]) the reader fetches
chunk files directly and decodes them with numcodecs' Blosc, which is the same bytes-on-disk format zarr reads
(tests compare it with zarr). Any other array (zip, memory or remote stores, sharded or filtered arrays) goes
through zarr's own reads, one contiguous slice or one orthogonal selection per call.

Neither path substitutes the fill value for a chunk of written data: a missing chunk (a deleted file, or on the
zarr path a chunk absent from the store's listing) or one that does not decode raises
:class:`~s2robot.datasets.integrity.ChunkError` naming the array, the chunk and the episodes it covers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.storage import LocalStore

from .integrity import ChunkError, blosc_frame_problem, chunk_message, missing_chunks


class FrameReader:
    """Gather ``arr[frames]`` for an int array ``frames`` of any shape -> (*frames.shape, *arr.shape[1:]).

    ``where``: the store, for error messages; ``episode_ends``: int64 (E,) exclusive episode ends, to name the
    episodes a bad chunk covers; ``allow_missing``: read an absent chunk as the fill value (only for legacy stores'
    bool/int keys, see ``integrity.py``).
    """

    def __init__(self, arr: zarr.Array, where: str = "", episode_ends: np.ndarray | None = None,
                 allow_missing: bool = False):
        self.arr = arr
        self.shape = tuple(arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self._root: Path | None = None
        self._where, self._allow_missing = where or str(arr.store), allow_missing
        self._ends = np.asarray(episode_ends if episode_ends is not None else [self.shape[0]], dtype=np.int64)
        self._missing: set[int] | None = None  # zarr path: chunks absent from the listing (listed on first read)
        meta = arr.metadata
        codecs = tuple(getattr(meta, "codecs", ()))
        grid = getattr(meta, "chunk_grid", None)
        chunk = tuple(getattr(grid, "chunk_shape", ()))
        fast = (
            isinstance(arr.store, LocalStore)
            and len(chunk) == len(self.shape)
            and tuple(chunk[1:]) == self.shape[1:]
            and len(codecs) in (1, 2)
            and isinstance(codecs[0], BytesCodec)
            and (len(codecs) == 1 or isinstance(codecs[1], BloscCodec))
            and (codecs[0].endian is None or getattr(codecs[0].endian, "value", None) == "little")
            and getattr(meta.chunk_key_encoding, "name", "default") == "default"
        )
        if fast and (self.dtype.itemsize == 1 or np.little_endian):
            self._root = Path(arr.store.root) / arr.path
            self._frames_per_chunk = int(chunk[0])
            self._blosc = len(codecs) == 2
            self._encode_key = meta.chunk_key_encoding.encode_chunk_key
            self._fill = np.asarray(meta.fill_value, dtype=self.dtype)
            self._chunk_shape = chunk

    @property
    def fast(self) -> bool:
        """Whether reads bypass zarr's indexing (local, time-chunked, bytes+blosc arrays)."""
        return self._root is not None

    def _chunk(self, c: int) -> np.ndarray:
        path = self._root / self._encode_key((c,) + (0,) * (len(self.shape) - 1))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # zarr would return the fill value; for written data that is an error
            if self._allow_missing:
                return np.full(self._chunk_shape, self._fill, dtype=self.dtype)
            raise self._error(c, "is missing from storage (its file was deleted?); not read as zeros") from None
        try:
            if self._blosc:
                from numcodecs import blosc

                problem = blosc_frame_problem(raw, int(np.prod(self._chunk_shape)) * self.dtype.itemsize)
                if problem:  # blosc itself would read past a truncated buffer
                    raise ValueError(problem)
                raw = blosc.decompress(raw)
            return np.frombuffer(raw, dtype=self.dtype).reshape(self._chunk_shape)
        except Exception as e:  # noqa: BLE001 - truncated or corrupt chunk file
            raise self._error(c, f"cannot be decoded ({type(e).__name__}: {e}; file {path})") from None

    def _error(self, c: int, problem: str) -> ChunkError:
        k = int(self.arr.chunks[0])
        return ChunkError(chunk_message(self._where, self.arr.path, c, k, self._ends, problem))

    def read(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, dtype=np.int64)
        flat = frames.reshape(-1)
        if len(flat) and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(f"frame index out of range for an array of {self.shape[0]} frames")
        if self._root is None:
            return self._read_zarr(flat).reshape(*frames.shape, *self.shape[1:])
        out = np.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        k = self._frames_per_chunk
        chunk_ids = flat // k
        order = np.argsort(chunk_ids, kind="stable")
        ids, starts = np.unique(chunk_ids[order], return_index=True)
        for c, sel in zip(ids, np.split(order, starts[1:])):
            out[sel] = self._chunk(int(c))[flat[sel] - c * k]
        return out.reshape(*frames.shape, *self.shape[1:])

    def _read_zarr(self, flat: np.ndarray) -> np.ndarray:
        if not len(flat):
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        uniq, inverse = np.unique(flat, return_inverse=True)
        k = int(self.arr.chunks[0])
        if not self._allow_missing:
            if self._missing is None:
                self._missing = set(missing_chunks(self.arr, self.shape[0]))
            gone = sorted(self._missing.intersection((uniq // k).tolist()))
            if gone:
                raise self._error(gone[0], "is missing from storage; not read as zeros")
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        try:
            if hi - lo <= 2 * len(uniq):  # (nearly) contiguous: one slice
                return np.asarray(self.arr[lo:hi])[flat - lo]
            return np.asarray(self.arr.get_orthogonal_selection((uniq,)))[inverse]
        except Exception as e:  # noqa: BLE001 - name the chunk that does not decode
            for c in np.unique(uniq // k).tolist():
                try:
                    self.arr[c * k : min((c + 1) * k, self.shape[0])]
                except Exception as ce:  # noqa: BLE001
                    raise self._error(c, f"cannot be decoded ({type(ce).__name__}: {ce})") from None
            raise
