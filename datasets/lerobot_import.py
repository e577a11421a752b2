"""Import a local LeRobotDataset root (format v3.0 or v2.1) into an :class:`EpisodeStore`.

Default mapping (LeRobot feature -> store key), one store episode per LeRobot episode in ``episode_index`` order:

==================================  =====================================================================
LeRobot                             store
==================================  =====================================================================
``observation.images.<cam>``        ``<cam>_image`` uint8 (T, H, W, 3): MP4 frames decoded with PyAV
                                    (``dtype: video``) or Parquet image bytes (``dtype: image``)
``observation.state``               ``proprio`` (dtype kept, float32 in LeRobot)
``action``                          ``action``
``task_index`` column               ``task_index`` int64 (T,): index into ``attrs["tasks"]``
episode lengths                     ``meta/episode_ends``
``fps``, tasks, ``robot_type``      attrs ``fps``, ``tasks`` (by task_index), ``task``, ``source``
==================================  =====================================================================

``key_map`` ({lerobot_key: store_key}) adds or renames mappings (e.g. ``{"observation.environment_state":
"env_state"}``); a store key of ``""`` drops a default mapping. ``image_size`` = (H, W) resizes every camera.

Memory holds one episode at a time (plus the low-dim columns of the one Parquet file being read). Crash safety and
resume work as in ``s2robot collect``: each episode is appended (data first, end last) before the next is read, and
running the same import again on an existing output continues after its last finished episode.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .lerobot_format import EpisodeRef, LeRobotFormatError, LeRobotMeta, read_meta
from .store import DatasetError, EpisodeStore, StoreLike, is_image_key
from .video_io import decode_frames

IMAGE_PREFIX = "observation.images."


def default_key_map(meta: LeRobotMeta) -> dict[str, str]:
    """{lerobot_key: store_key} for the features this dataset has: cameras, state, action."""
    out = {k: f"{k[len(IMAGE_PREFIX):]}_image" for k in meta.video_keys + meta.image_keys if k.startswith(IMAGE_PREFIX)}
    out.update({k: v for k, v in (("observation.state", "proprio"), ("action", "action")) if k in meta.features})
    return out


def resolve_key_map(meta: LeRobotMeta, overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The default map with ``overrides`` applied; every key must be a feature of ``meta/info.json``."""
    key_map = default_key_map(meta)
    for src, dst in (overrides or {}).items():
        if src not in meta.features:
            raise LeRobotFormatError(
                f"{meta.root / 'meta/info.json'}: no feature {src!r} to map (features: {sorted(meta.features)})"
            )
        if dst:
            key_map[src] = dst
        else:
            key_map.pop(src, None)
    if not key_map:
        raise LeRobotFormatError(f"{meta.root}: nothing to import (no camera, state or action feature mapped)")
    for src, dst in key_map.items():
        kind = meta.features[src].get("dtype")
        visual = kind in ("video", "image")
        if not visual and not _numeric(kind):
            raise LeRobotFormatError(f"feature {src!r} has dtype {kind!r}; only numeric and camera features map to "
                                     "store arrays")
        if visual != is_image_key(dst):
            raise LeRobotFormatError(
                f"key map {src!r} -> {dst!r}: camera features must map to a '<cam>_image' key and only they may"
            )
    stores = list(key_map.values())
    dup = sorted({s for s in stores if stores.count(s) > 1})
    if dup or "task_index" in stores:
        raise LeRobotFormatError(f"key map sends two features to store key {(dup or ['task_index'])[0]!r}")
    return key_map


def _numeric(dtype: Any) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def _names(feature: Mapping[str, Any]) -> Any:
    names = feature.get("names")
    return names if isinstance(names, (list, dict)) else None


def store_attrs(meta: LeRobotMeta, key_map: dict[str, str], image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Store attrs: fps, tasks, cameras, layouts and the ``source`` record that a resumed import must match."""
    inv = {v: k for k, v in key_map.items()}
    attrs: dict[str, Any] = {
        "task": meta.tasks[0] if len(meta.tasks) == 1 else f"lerobot:{meta.root.name}",
        "tasks": list(meta.tasks),
        "fps": meta.fps,
        "cameras": sorted(k[: -len("_image")] for k in key_map.values() if is_image_key(k)),
        "source": {
            "format": "lerobot", "path": str(meta.root.resolve()), "codebase_version": meta.version,
            "robot_type": meta.info.get("robot_type"), "total_episodes": len(meta.episodes),
            "total_frames": sum(e.length for e in meta.episodes), "key_map": dict(key_map),
            "image_size": list(image_size) if image_size else None,
        },
        "lerobot_features": {k: meta.features[k] for k in key_map},
        "source_episodes": [e.index for e in meta.episodes],
    }
    if "action" in inv:
        attrs["action_space"] = {"dim": int(np.prod(meta.features[inv["action"]].get("shape", [1]))),
                                 "layout": _names(meta.features[inv["action"]]), "source": f"lerobot {inv['action']}"}
    if "proprio" in inv:
        attrs["proprio_layout"] = _names(meta.features[inv["proprio"]])
    return attrs


class _ParquetCache:
    """The rows of one Parquet data file at a time (v3.0 files hold several consecutive episodes)."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.path: Path | None = None
        self.table = None
        self.episode_index: np.ndarray | None = None

    def rows(self, path: Path, episode: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if path != self.path:
            if not path.is_file():
                raise LeRobotFormatError(f"{path}: Parquet data file missing (episode {episode})")
            names = pq.read_schema(path).names
            absent = [c for c in self.columns if c not in names]
            if absent:
                raise LeRobotFormatError(f"{path}: missing column(s) {absent}")
            self.table = pq.read_table(path, columns=self.columns)
            self.episode_index = self.table.column("episode_index").to_numpy()
            self.path = path
        idx = np.flatnonzero(self.episode_index == episode)
        if len(idx) and not np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
            raise LeRobotFormatError(f"{path}: rows of episode {episode} are not contiguous")
        return self.table.slice(int(idx[0]), len(idx)) if len(idx) else pa.table({c: [] for c in self.columns})


def column_array(table, name: str, feature: Mapping[str, Any], where: str) -> np.ndarray:
    """A Parquet column of per-frame values (scalars or fixed/variable-size lists) -> (T, *shape) numpy."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    n = len(col)
    shape = tuple(int(d) for d in feature.get("shape", (1,)))
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    values = col.to_numpy(zero_copy_only=False)
    if values.size != n * int(np.prod(shape)):
        raise LeRobotFormatError(f"{where}: column {name!r} holds {values.size // max(n, 1)} values per frame, "
                                 f"info.json declares shape {list(shape)}")
    return values.reshape(n, *shape).astype(np.dtype(feature["dtype"]), copy=False)


def _decode_parquet_images(table, name: str, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """``dtype: image`` columns: structs ``{bytes, path}`` of PNG/JPEG files -> uint8 (T, H, W, 3)."""
    from PIL import Image

    out = []
    for cell in table.column(name).to_pylist():
        if not cell or not cell.get("bytes"):
            raise LeRobotFormatError(f"{where}: image column {name!r} has a row without embedded bytes")
        img = Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
        if size is not None:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        out.append(np.asarray(img, dtype=np.uint8))
    return np.stack(out)


def read_episode(meta: LeRobotMeta, ep: EpisodeRef, key_map: dict[str, str], cache: _ParquetCache,
                 image_size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """One LeRobot episode -> ``{store_key: (T, *shape)}`` (plus ``task_index``), frames checked against length."""
    where = f"{ep.data_path} (episode {ep.index})"
    table = cache.rows(ep.data_path, ep.index)
    if table.num_rows != ep.length:
        raise LeRobotFormatError(f"{where}: {table.num_rows} rows, the episode metadata says length {ep.length}")
    frame_index = table.column("frame_index").to_numpy()
    if not np.array_equal(frame_index, np.arange(ep.length)):
        raise LeRobotFormatError(f"{where}: frame_index is not 0..{ep.length - 1} in order")
    timestamps = table.column("timestamp").to_numpy().astype(np.float64)
    out: dict[str, np.ndarray] = {"task_index": table.column("task_index").to_numpy().astype(np.int64)}
    for src, dst in key_map.items():
        kind = meta.features[src].get("dtype")
        if kind == "video":
            path, t0 = ep.videos[src]
            out[dst] = decode_frames(path, t0 + timestamps, meta.fps, image_size, what=f" ({src}, episode {ep.index})")
        elif kind == "image":
            out[dst] = _decode_parquet_images(table, src, image_size, where)
        else:
            out[dst] = column_array(table, src, meta.features[src], where)
    return out


def _open_for_resume(dst: StoreLike, attrs: dict[str, Any], meta: LeRobotMeta) -> EpisodeStore:
    store = EpisodeStore.open(dst, mode="a")
    old = store.attrs.get("source", {})
    for key in ("format", "path", "codebase_version", "total_episodes", "total_frames", "key_map", "image_size"):
        if old.get(key) != attrs["source"][key]:
            store.close()
            raise DatasetError(f"{dst} holds a different import ({key}={old.get(key)!r}, this import has "
                               f"{attrs['source'][key]!r}); choose another output or pass overwrite")
    want = np.array([e.length for e in meta.episodes[: store.n_episodes]])
    if not np.array_equal(store.episode_lengths, want):
        store.close()
        raise DatasetError(f"{dst}: its {store.n_episodes} episodes' lengths differ from the source's first ones")
    return store


def import_lerobot(src: str | Path, dst: StoreLike, key_map: Mapping[str, str] | None = None,
                   image_size: tuple[int, int] | None = None, overwrite: bool = False,
                   progress: bool = True) -> EpisodeStore:
    """Import the LeRobot dataset root ``src`` into the store ``dst`` (see the module docstring), resuming a
    partial ``dst`` of the same import unless ``overwrite``."""
    from tqdm.auto import tqdm

    meta = read_meta(src)
    if not meta.episodes:
        raise LeRobotFormatError(f"{meta.root}: the dataset holds no episodes")
    resolved = resolve_key_map(meta, key_map)
    attrs = store_attrs(meta, resolved, image_size)
    local = isinstance(dst, (str, Path)) and "://" not in str(dst)
    if local and Path(dst).exists() and not overwrite:
        store = _open_for_resume(dst, attrs, meta)
    else:
        store = EpisodeStore.create(dst, attrs=attrs, overwrite=overwrite)
    columns = ["episode_index", "frame_index", "timestamp", "task_index"]
    columns += [k for k in resolved if meta.features[k].get("dtype") != "video" and k not in columns]
    cache = _ParquetCache(columns)
    todo = meta.episodes[store.n_episodes:]
    frames = sum(e.length for e in meta.episodes)
    bar = tqdm(total=frames, initial=frames - sum(e.length for e in todo), unit="frame",
               desc=f"import {meta.root.name}", disable=not progress)
    for ep in todo:
        store.append_episode(read_episode(meta, ep, resolved, cache, image_size))
        bar.update(ep.length)
    bar.close()
    return store


__all__ = ["import_lerobot", "default_key_map", "resolve_key_map", "read_episode"]
