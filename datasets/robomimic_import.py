"""Convert a robomimic HDF5 dataset into an :class:`EpisodeStore`.

Mapping (robomimic ``data/demo_N/...`` -> store ``data/<key>``), one episode per demo in numeric demo order:

=====================================  ===========================================================
robomimic                              store
=====================================  ===========================================================
``obs/<name>_image`` uint8 (T,H,W,3)   ``<name>_image`` (camera ``<name>``, e.g. ``agentview``)
``obs/<key>`` low-dim (T,) or (T,D)    ``obs_<key>`` float32 (T,D), and concatenated into ``proprio``
other ``obs/<key>`` (e.g. depth)       ``obs_<key>``, unchanged dtype, not in ``proprio``
``actions``                            ``action`` float32
``rewards``                            ``reward`` float32
``dones``                              ``success`` bool
``states``                             ``sim_state`` (dtype kept)
``data`` attr ``env_args`` (JSON)      attrs ``task`` (env_name), ``env_kwargs``, ``robomimic_env_args``
``mask/<filter>``                      attrs ``filters[<filter>]``: list of episode indices
=====================================  ===========================================================

``proprio`` concatenates the low-dim keys in ``proprio_keys`` order (default: sorted names); the layout is in
``attrs["proprio_layout"]`` as ``[{"key", "start", "stop"}]``. ``next_obs`` is not copied (it is ``obs`` shifted).
The ``env_args`` JSON and filter masks are read with ``robomimic.utils.file_utils``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .store import DatasetError, EpisodeStore, StoreLike


def _robomimic_file_utils():
    """``robomimic.utils.file_utils`` with its import-time banner silenced (it never imports env wrappers)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import robomimic.utils.file_utils as file_utils
    return file_utils


def _demo_order(names: Sequence[str]) -> list[str]:
    def number(name: str) -> tuple[int, str]:
        m = re.search(r"(\d+)$", name)
        return (int(m.group(1)) if m else -1, name)

    return sorted(names, key=number)


def _is_lowdim(arr_shape: tuple[int, ...]) -> bool:
    return len(arr_shape) <= 2


def import_robomimic(
    src: str | Path,
    dst: StoreLike,
    proprio_keys: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EpisodeStore:
    """Convert robomimic HDF5 ``src`` into a new store at ``dst`` (see module docstring for the mapping)."""
    import h5py
    from tqdm.auto import tqdm

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"robomimic dataset not found: {src}")
    file_utils = _robomimic_file_utils()
    try:
        env_meta = file_utils.get_env_metadata_from_dataset(str(src))
    except (KeyError, OSError) as e:
        raise DatasetError(f"{src}: not a robomimic dataset (data/ attrs 'env_args' unreadable: {e})") from e
    with h5py.File(src, "r") as f:
        demos = _demo_order(list(f["data"].keys()))
        if not demos:
            raise DatasetError(f"{src}: data/ holds no demos")
        filters = list(f["mask"].keys()) if "mask" in f else []
        first_obs = f[f"data/{demos[0]}/obs"]
        obs_shapes = {k: first_obs[k].shape for k in first_obs}
    image_keys = sorted(k for k in obs_shapes if k.endswith("_image") and len(obs_shapes[k]) == 4)
    lowdim = sorted(k for k in obs_shapes if k not in image_keys and _is_lowdim(obs_shapes[k]))
    if proprio_keys is None:
        proprio_keys = lowdim
    unknown = [k for k in proprio_keys if k not in lowdim]
    if unknown:
        raise DatasetError(f"{src}: proprio keys {unknown} are not low-dim obs keys (have {lowdim})")
    layout, start = [], 0
    for k in proprio_keys:
        width = int(np.prod(obs_shapes[k][1:], dtype=np.int64)) if len(obs_shapes[k]) > 1 else 1
        layout.append({"key": k, "start": start, "stop": start + width})
        start += width

    demo_index = {name: i for i, name in enumerate(demos)}
    filter_eps = {}
    for name in filters:
        members = file_utils.get_demos_for_filter_key(str(src), name)
        filter_eps[name] = sorted(demo_index[d] for d in members if d in demo_index)
    env_kwargs = env_meta.get("env_kwargs", {})
    attrs: dict[str, Any] = {
        "task": env_meta.get("env_name", "unknown"),
        "env_kwargs": env_kwargs,
        "fps": env_kwargs.get("control_freq", 20),
        "cameras": [k[: -len("_image")] for k in image_keys],
        "source": {"format": "robomimic", "path": str(src.resolve())},
        "robomimic_env_args": json.loads(json.dumps(env_meta)),
        "proprio_layout": layout,
        "filters": filter_eps,
        "source_demos": demos,
    }
    store = EpisodeStore.create(dst, attrs=attrs, overwrite=overwrite)
    with h5py.File(src, "r") as f:
        for name in tqdm(demos, desc=f"import {src.name}", unit="demo", disable=not progress):
            g = f[f"data/{name}"]
            ep = _convert_demo(g, name, image_keys, obs_shapes, proprio_keys)
            if "action_space" not in store.group.attrs:
                store.group.attrs["action_space"] = {"dim": int(ep["action"].shape[1]), "source": "robomimic actions"}
            store.append_episode(ep)
    return store


def _convert_demo(g, name: str, image_keys: list[str], obs_shapes: dict, proprio_keys: Sequence[str]) -> dict:
    """One robomimic demo group -> an episode dict."""
    if "actions" not in g or "obs" not in g:
        raise DatasetError(f"demo {name}: missing 'actions' or 'obs'")
    actions = np.asarray(g["actions"], dtype=np.float32)
    t = actions.shape[0]
    ep: dict[str, np.ndarray] = {"action": actions.reshape(t, -1)}
    obs = g["obs"]
    if set(obs.keys()) != set(obs_shapes):
        raise DatasetError(f"demo {name}: obs keys {sorted(obs.keys())} differ from the first demo's {sorted(obs_shapes)}")
    for k in image_keys:
        img = np.asarray(obs[k])
        if img.dtype != np.uint8:
            raise DatasetError(f"demo {name}: obs/{k} must be uint8 images, got {img.dtype}")
        ep[k] = img
    for k in sorted(obs_shapes):
        if k in image_keys:
            continue
        v = np.asarray(obs[k])
        ep[f"obs_{k}"] = v.reshape(t, -1).astype(np.float32) if _is_lowdim(v.shape) else v
    if proprio_keys:
        ep["proprio"] = np.concatenate([ep[f"obs_{k}"] for k in proprio_keys], axis=1)
    ep["reward"] = np.asarray(g["rewards"], dtype=np.float32).reshape(t) if "rewards" in g else np.zeros(t, np.float32)
    ep["success"] = np.asarray(g["dones"]).reshape(t).astype(bool) if "dones" in g else np.zeros(t, bool)
    if "states" in g:
        ep["sim_state"] = np.asarray(g["states"])
    return ep
