"""Export an :class:`EpisodeStore` as a LeRobotDataset root in format v3.0 (what ``LeRobotDataset(root=...)`` opens).

Default mapping (store key -> LeRobot feature): ``<cam>_image`` -> ``observation.images.<cam>`` (MP4, default codec
``libsvtav1`` with LeRobot's own defaults ``crf=30, g=2``, yuv420p), ``proprio`` -> ``observation.state``,
``action`` -> ``action``; a store imported from LeRobot maps back through its recorded key map. ``key_map``
({store_key: lerobot_key}) adds or renames; ``""`` drops one.

Written files (see ``lerobot_format.py`` for the layout): ``meta/info.json``, ``meta/tasks.parquet``,
``meta/episodes/chunk-000/file-000.parquet``, ``meta/stats.json`` (min, max, mean, std, count and the q01, q10, q50,
q90, q99 quantiles LeRobot's normalizers read; images per channel in [0, 1], shape (3, 1, 1)), ``data/`` and
``videos/`` files that roll over at LeRobot's default sizes (100 MB data, 200 MB video, 1000 files per chunk).
Task strings: per step from ``task_index`` + ``attrs["tasks"]`` when the store has them, else ``attrs["task"]``.
Memory holds one episode at a time plus the low-dim columns (for their quantiles) and per-channel pixel histograms.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .lerobot_format import DEFAULT_CHUNKS_SIZE, LeRobotFormatError
from .store import DatasetError, EpisodeStore, StoreLike, is_image_key
from .video_io import VideoWriter

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
CODEC_NAMES = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "libx265": "hevc"}  # info.json names
DEFAULT_VIDEO = {"codec": "libsvtav1", "options": {"crf": "30", "g": "2", "preset": "12"}}


def default_key_map(store: EpisodeStore) -> dict[str, str]:
    """{store_key: lerobot_key}: the inverse of an import's key map, else cameras/proprio/action by name."""
    recorded = (store.attrs.get("source") or {}).get("key_map")
    if isinstance(recorded, dict) and recorded:
        return {v: k for k, v in recorded.items() if v in store.spec}
    out = {k: f"observation.images.{k[: -len('_image')]}" for k in store.keys if is_image_key(k)}
    out.update({k: v for k, v in (("proprio", "observation.state"), ("action", "action")) if k in store.spec})
    return out


def resolve_key_map(store: EpisodeStore, overrides: Mapping[str, str] | None) -> dict[str, str]:
    key_map = default_key_map(store)
    for src, dst in (overrides or {}).items():
        if src not in store.spec:
            raise DatasetError(f"{store.path}: no data key {src!r} to export (keys: {store.keys})")
        if dst:
            key_map[src] = dst
        else:
            key_map.pop(src, None)
    for src, dst in key_map.items():
        shape = store.spec[src]["shape"]
        if not is_image_key(src) and len(shape) > 1:
            raise DatasetError(f"data/{src} has per-step shape {shape}; LeRobot features here are scalars or vectors")
        if dst in ("timestamp", "frame_index", "episode_index", "index", "task_index", "task"):
            raise DatasetError(f"key map {src!r} -> {dst!r}: {dst!r} is a column LeRobot writes itself")
    if not key_map:
        raise DatasetError(f"{store.path}: nothing to export (no camera, proprio or action key)")
    targets = list(key_map.values())
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        raise DatasetError(f"key map sends two store keys to LeRobot feature {dup[0]!r}")
    return key_map


def _names(layout: Any, n: int, key: str) -> list[str]:
    if isinstance(layout, list) and len(layout) == n and all(isinstance(x, str) for x in layout):
        return list(layout)
    return [f"{key}_{i}" for i in range(n)]


def features_for(store: EpisodeStore, key_map: dict[str, str], fps: int, video: dict) -> dict[str, dict]:
    """LeRobot ``features`` of ``info.json`` for the mapped keys plus LeRobot's bookkeeping columns."""
    attrs, feats = store.attrs, {}
    for src, dst in key_map.items():
        shape, dtype = store.spec[src]["shape"], store.spec[src]["dtype"]
        if is_image_key(src):
            h, w, _ = shape
            codec = CODEC_NAMES.get(video["codec"], video["codec"])
            feats[dst] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                          "info": {"video.height": h, "video.width": w, "video.codec": codec,
                                   "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                   "video.channels": 3, "has_audio": False}}
            continue
        n = int(np.prod(shape)) if shape else 1
        layout = {"proprio": attrs.get("proprio_layout"),
                  "action": (attrs.get("action_space") or {}).get("layout")}.get(src)
        recorded = (attrs.get("lerobot_features") or {}).get(dst, {}).get("names")
        feats[dst] = {"dtype": dtype, "shape": [n],
                      "names": recorded if recorded is not None else _names(layout, n, dst.split(".")[-1])}
    feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64", "shape": [1], "names": None}
    return feats


def _hf_features(features: dict[str, dict]) -> dict[str, Any]:
    """The ``huggingface`` Parquet schema metadata (``datasets.Features``) for the non-video features."""
    out = {}
    for k, f in features.items():
        if f["dtype"] == "video":
            continue
        value = {"dtype": f["dtype"], "_type": "Value"}
        bookkeeping = f["shape"] == [1] and f.get("names") is None
        out[k] = value if bookkeeping else {"feature": value, "length": f["shape"][0], "_type": "List"}
    return {"info": {"features": out}}


class _StatsAccumulator:
    """Whole-dataset stats in LeRobot's ``stats.json`` layout: low-dim values kept for exact quantiles, images as
    256-bin per-channel histograms (exact for uint8)."""

    def __init__(self) -> None:
        self.lowdim: dict[str, list[np.ndarray]] = {}
        self.hist: dict[str, np.ndarray] = {}
        self.count: dict[str, int] = {}

    def add(self, key: str, values: np.ndarray, image: bool) -> None:
        self.count[key] = self.count.get(key, 0) + len(values)
        if image:
            h = self.hist.setdefault(key, np.zeros((3, 256), np.int64))
            for c in range(3):
                h[c] += np.bincount(values[..., c].ravel(), minlength=256)
        else:
            self.lowdim.setdefault(key, []).append(values.reshape(len(values), -1).astype(np.float64))

    def result(self) -> dict[str, dict[str, list]]:
        out = {}
        for key, parts in self.lowdim.items():
            v = np.concatenate(parts)
            s = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0)}
            s.update({q: np.quantile(v, p, axis=0) for q, p in QUANTILES.items()})
            out[key] = {k: a.tolist() for k, a in s.items()} | {"count": [self.count[key]]}
        levels = np.arange(256) / 255.0
        for key, h in self.hist.items():
            n = h.sum(1, keepdims=True)
            mean = (h * levels).sum(1) / n[:, 0]
            var = (h * (levels[None] - mean[:, None]) ** 2).sum(1) / n[:, 0]
            cdf = np.cumsum(h, 1) / n
            s = {"min": [levels[np.flatnonzero(r)[0]] for r in h], "max": [levels[np.flatnonzero(r)[-1]] for r in h],
                 "mean": mean, "std": np.sqrt(var)}
            s.update({q: [levels[np.searchsorted(c, p)] for c in cdf] for q, p in QUANTILES.items()})
            out[key] = {k: np.asarray(a, np.float64).reshape(3, 1, 1).tolist() for k, a in s.items()}
            out[key]["count"] = [self.count[key]]
        return out


class _RollingFiles:
    """chunk/file indices of one output stream; moves to the next file once the current one passes ``limit_mb``."""

    def __init__(self, limit_mb: int):
        self.limit, self.chunk, self.file = limit_mb * 1024 * 1024, 0, 0

    def advance_if_full(self, size: int) -> bool:
        if size < self.limit:
            return False
        self.file += 1
        if self.file >= DEFAULT_CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0
        return True


def _episode_tasks(store: EpisodeStore, start: int, end: int) -> list[str]:
    """Task string of each step of ``[start, end)``."""
    attrs = store.attrs
    tasks = attrs.get("tasks")
    if "task_index" in store.spec and isinstance(tasks, list) and tasks:
        idx = np.asarray(store.array("task_index")[start:end]).reshape(-1)
        if idx.min() < 0 or idx.max() >= len(tasks):
            raise DatasetError(f"{store.path}: data/task_index holds {int(idx.max())}, attrs['tasks'] has {len(tasks)}")
        return [str(tasks[i]) for i in idx]
    return [str(attrs.get("task", "unknown"))] * (end - start)


def export_lerobot(src: StoreLike, out_dir: str | Path, key_map: Mapping[str, str] | None = None,
                   video: Mapping[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
                   robot_type: str | None = None) -> Path:
    """Write the store ``src`` as a LeRobot v3.0 dataset root ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite to replace it")
        shutil.rmtree(out)
    video = {**DEFAULT_VIDEO, **dict(video or {})}
    with EpisodeStore.open(src) as store:
        if store.n_episodes == 0:
            raise DatasetError(f"{src}: the store holds no episodes")
        fps_attr = float(store.attrs.get("fps", 0) or 0)
        if fps_attr <= 0 or fps_attr != int(fps_attr):
            raise DatasetError(f"{src}: attrs['fps'] must be a positive whole number for LeRobot, got {fps_attr!r}")
        fps = int(fps_attr)
        resolved = resolve_key_map(store, key_map)
        features = features_for(store, resolved, fps, video)
        out.mkdir(parents=True)
        try:
            episodes, tasks, stats = _write_episodes(store, out, resolved, features, fps, video, progress)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # no half-written dataset left behind
            raise
        robot = robot_type or (store.attrs.get("source") or {}).get("robot_type") or store.attrs.get("robot")
        _write_meta(out, features, fps, episodes, tasks, stats, robot)
    return out


def _write_episodes(store: EpisodeStore, out: Path, key_map: dict[str, str], features: dict, fps: int,
                    video: Mapping[str, Any], progress: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    cams = {s: d for s, d in key_map.items() if is_image_key(s)}
    lowdim = {s: d for s, d in key_map.items() if not is_image_key(s)}
    schema = pa.schema(
        [(d, pa.list_(pa.from_numpy_dtype(np.dtype(features[d]["dtype"])), features[d]["shape"][0]))
         for d in lowdim.values()]
        + [("timestamp", pa.float32())] + [(k, pa.int64()) for k in ("frame_index", "episode_index", "index",
                                                                     "task_index")],
        metadata={"huggingface": json.dumps(_hf_features(features))},
    )
    data_files, writer = _RollingFiles(DATA_FILE_MB), None
    video_files = {s: _RollingFiles(VIDEO_FILE_MB) for s in cams}
    encoders: dict[str, VideoWriter] = {}
    stats, tasks, episodes = _StatsAccumulator(), {}, []
    bar = tqdm(total=store.n_steps, unit="frame", desc=f"export {out.name}", disable=not progress)
    try:
        for e in range(store.n_episodes):
            start, end = store.episode_range(e)
            n = end - start
            step_tasks = _episode_tasks(store, start, end)
            for t in step_tasks:
                tasks.setdefault(t, len(tasks))
            row = {"episode_index": e, "tasks": list(dict.fromkeys(step_tasks)), "length": n,
                   "data/chunk_index": data_files.chunk, "data/file_index": data_files.file,
                   "dataset_from_index": start, "dataset_to_index": end}
            columns: dict[str, Any] = {}
            for s, d in lowdim.items():
                v = np.asarray(store.array(s)[start:end]).reshape(n, -1)
                stats.add(d, v, image=False)
                columns[d] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            book = {"timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n),
                    "episode_index": np.full(n, e), "index": np.arange(start, end),
                    "task_index": np.array([tasks[t] for t in step_tasks])}
            for k, v in book.items():
                columns[k] = pa.array(v)
                stats.add(k, v.reshape(n, 1), image=False)
            if writer is None:
                path = out / DATA_PATH.format(chunk_index=data_files.chunk, file_index=data_files.file)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(pa.table(columns, schema=schema))
            if data_files.advance_if_full(Path(writer.where).stat().st_size):
                writer.close()
                writer = None
            for s, d in cams.items():
                row.update(_encode_episode(store, s, d, start, end, fps, out, video, video_files[s], encoders, stats))
            episodes.append(row)
            bar.update(n)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        for enc in encoders.values():
            enc.close()
    return episodes, tasks, stats.result()


def _encode_episode(store, src: str, dst: str, start: int, end: int, fps: int, out: Path, video, files, encoders,
                    stats) -> dict[str, Any]:
    """Append one episode's frames of camera ``src`` to its current MP4; returns the episode's video columns."""
    enc = encoders.get(src)
    if enc is not None and files.advance_if_full(enc.bytes):
        enc.close()
        enc = None
    if enc is None:
        h, w, _ = store.spec[src]["shape"]
        path = out / VIDEO_PATH.format(video_key=dst, chunk_index=files.chunk, file_index=files.file)
        enc = encoders[src] = VideoWriter(path, fps, h, w, codec=video["codec"], options=video["options"])
    images = np.asarray(store.array(src)[start:end])
    stats.add(dst, images, image=True)
    t0 = enc.frames / fps
    enc.write(images)
    return {f"videos/{dst}/chunk_index": files.chunk, f"videos/{dst}/file_index": files.file,
            f"videos/{dst}/from_timestamp": t0, f"videos/{dst}/to_timestamp": enc.frames / fps}


def _write_meta(out: Path, features: dict, fps: int, episodes: list[dict], tasks: dict[str, int],
                stats: dict, robot_type: str | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for row in episodes:
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
    path = out / EPISODES_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episodes), path)
    names = list(tasks)
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}]}
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()), "task": pa.array(names)})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), out / "meta/tasks.parquet")
    total = sum(r["length"] for r in episodes)
    has_video = any(f["dtype"] == "video" for f in features.values())
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episodes),
            "total_frames": total, "total_tasks": len(tasks), "chunks_size": DEFAULT_CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if has_video else None, "features": features}
    (out / "meta/info.json").write_text(json.dumps(info, indent=4))
    (out / "meta/stats.json").write_text(json.dumps(stats, indent=4))


__all__ = ["export_lerobot", "default_key_map", "resolve_key_map", "features_for", "LeRobotFormatError"]
