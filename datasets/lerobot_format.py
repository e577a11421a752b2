"""The on-disk layout of a local LeRobotDataset root, format ``v3.0`` and ``v2.1``: read and check its metadata.

v3.0 (lerobot >= 0.4)::

    meta/info.json                                   codebase_version, fps, features, data_path, video_path, ...
    meta/tasks.parquet                               task (pandas index) -> task_index
    meta/episodes/chunk-*/file-*.parquet             one row per episode: length, tasks, data/{chunk,file}_index,
                                                     dataset_{from,to}_index, videos/<key>/{chunk_index,file_index,
                                                     from_timestamp,to_timestamp}
    data/chunk-*/file-*.parquet                      several episodes per file, one row per frame
    videos/<key>/chunk-*/file-*.mp4                  several episodes per file, back to back in time

v2.1 (lerobot <= 0.3)::

    meta/info.json, meta/tasks.jsonl, meta/episodes.jsonl
    data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet         one file per episode
    videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4

:func:`read_meta` turns either into one :class:`LeRobotMeta`: the features, the task strings and, per episode, where
its rows and its video frames are. Every problem is a :class:`LeRobotFormatError` naming the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import DatasetError

SUPPORTED_VERSIONS = ("v2.1", "v3.0")
REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "data_path")
BOOKKEEPING_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
INFO_PATH = "meta/info.json"
V30_TASKS_PATH = "meta/tasks.parquet"
V30_EPISODES_DIR = "meta/episodes"
V21_TASKS_PATH = "meta/tasks.jsonl"
V21_EPISODES_PATH = "meta/episodes.jsonl"
DEFAULT_CHUNKS_SIZE = 1000


class LeRobotFormatError(DatasetError):
    """A LeRobot dataset root that is missing a file or key, or whose files disagree with each other."""


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives: its Parquet file (rows with ``episode_index == index``) and, per video feature,
    its MP4 file and the time in that file of the episode's first frame (``from_timestamp``, 0 in v2.1)."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)


@dataclass
class LeRobotMeta:
    """Everything the importer needs from ``meta/``: ``features`` as in ``info.json``, ``tasks`` by task_index."""

    root: Path
    version: str
    fps: float
    info: dict[str, Any]
    features: dict[str, dict[str, Any]]
    tasks: list[str]
    episodes: list[EpisodeRef]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def image_keys(self) -> list[str]:
        """Features stored as encoded images inside the Parquet rows (``dtype: image``)."""
        return [k for k, f in self.features.items() if f.get("dtype") == "image"]


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing (not a LeRobot dataset root?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LeRobotFormatError(f"{path}: not valid JSON ({e})") from None


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LeRobotFormatError(f"{path}:{n}: not valid JSON ({e})") from None
    return rows


def read_info(root: Path) -> dict[str, Any]:
    """``meta/info.json`` with its version and required keys checked."""
    path = root / INFO_PATH
    info = _load_json(path)
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{path}: must hold a JSON object")
    version = info.get("codebase_version")
    if version is not None and version not in SUPPORTED_VERSIONS:
        raise LeRobotFormatError(
            f"{path}: unsupported LeRobot codebase_version {version!r} (supported: {', '.join(SUPPORTED_VERSIONS)}; "
            "convert older datasets with lerobot's conversion scripts)"
        )
    missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
    if any(f.get("dtype") == "video" for f in (info.get("features") or {}).values()) and "video_path" not in info:
        missing.append("video_path")
    if missing:
        raise LeRobotFormatError(f"{path}: missing required key(s) {missing}")
    if not isinstance(info["features"], dict) or not info["features"]:
        raise LeRobotFormatError(f"{path}: 'features' must be a non-empty object")
    if not float(info["fps"]) > 0:
        raise LeRobotFormatError(f"{path}: fps must be positive, got {info['fps']!r}")
    return info


def read_meta(root: str | Path) -> LeRobotMeta:
    """Read and cross-check a LeRobot dataset root (v3.0 or v2.1)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LeRobot dataset root not found: {root} is not a directory")
    info = read_info(root)
    version = info["codebase_version"]
    features = dict(info["features"])
    if version == "v3.0":
        tasks, episodes = _read_v30(root, info, features)
    else:
        tasks, episodes = _read_v21(root, info, features)
    if len(episodes) != int(info["total_episodes"]):
        raise LeRobotFormatError(
            f"{root / INFO_PATH}: total_episodes is {info['total_episodes']} but the episode metadata lists "
            f"{len(episodes)} episodes"
        )
    frames = sum(e.length for e in episodes)
    if frames != int(info["total_frames"]):
        raise LeRobotFormatError(
            f"{root / INFO_PATH}: total_frames is {info['total_frames']} but the episodes' lengths add up to {frames}"
        )
    return LeRobotMeta(root, version, float(info["fps"]), info, features, tasks, episodes)


def _format_path(root: Path, template: str, info_path: Path, **fields: Any) -> Path:
    try:
        return root / template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise LeRobotFormatError(f"{info_path}: path template {template!r} cannot be filled ({e!r})") from None


def _read_v21(root: Path, info: dict, features: dict) -> tuple[list[str], list[EpisodeRef]]:
    info_path = root / INFO_PATH
    task_rows = _load_jsonl(root / V21_TASKS_PATH)
    tasks = _tasks_by_index({int(r["task_index"]): str(r["task"]) for r in task_rows}, root / V21_TASKS_PATH)
    chunks_size = int(info.get("chunks_size", DEFAULT_CHUNKS_SIZE))
    video_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
    episodes = []
    for row in sorted(_load_jsonl(root / V21_EPISODES_PATH), key=lambda r: int(r["episode_index"])):
        idx = int(row["episode_index"])
        chunk = idx // chunks_size
        data = _format_path(root, info["data_path"], info_path, episode_chunk=chunk, episode_index=idx)
        videos = {
            k: (_format_path(root, info["video_path"], info_path, episode_chunk=chunk, video_key=k, episode_index=idx),
                0.0)
            for k in video_keys
        }
        episodes.append(EpisodeRef(idx, int(row["length"]), tuple(row.get("tasks", ())), data, videos))
    return tasks, episodes


def _read_v30(root: Path, info: dict, features: dict) -> tuple[list[str], list[EpisodeRef]]:
    import pyarrow.parquet as pq

    info_path = root / INFO_PATH
    tasks_path = root / V30_TASKS_PATH
    if not tasks_path.is_file():
        raise LeRobotFormatError(f"{tasks_path}: missing")
    t = pq.read_table(tasks_path).to_pydict()
    if "task_index" not in t or "task" not in t:
        raise LeRobotFormatError(f"{tasks_path}: needs columns 'task' and 'task_index', has {sorted(t)}")
    tasks = _tasks_by_index(dict(zip(map(int, t["task_index"]), map(str, t["task"]))), tasks_path)
    files = sorted((root / V30_EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root / V30_EPISODES_DIR}: no episode metadata files (chunk-*/file-*.parquet)")
    video_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
    needed = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
    for k in video_keys:
        needed += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
    rows: list[dict] = []
    for f in files:
        names = pq.read_schema(f).names
        absent = [c for c in needed if c not in names]
        if absent:
            raise LeRobotFormatError(f"{f}: missing column(s) {absent}")
        rows += pq.read_table(f, columns=needed).to_pylist()
    episodes = []
    for r in sorted(rows, key=lambda r: int(r["episode_index"])):
        data = _format_path(root, info["data_path"], info_path,
                            chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
        videos = {
            k: (_format_path(root, info["video_path"], info_path, video_key=k,
                             chunk_index=r[f"videos/{k}/chunk_index"], file_index=r[f"videos/{k}/file_index"]),
                float(r[f"videos/{k}/from_timestamp"]))
            for k in video_keys
        }
        episodes.append(EpisodeRef(int(r["episode_index"]), int(r["length"]), tuple(r["tasks"] or ()), data, videos))
    return tasks, episodes


def _tasks_by_index(by_index: dict[int, str], path: Path) -> list[str]:
    if sorted(by_index) != list(range(len(by_index))):
        raise LeRobotFormatError(f"{path}: task_index values must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]
