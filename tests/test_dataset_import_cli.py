"""robomimic HDF5 import round trip and the `s2robot dataset info|import-robomimic` verbs."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from s2robot.cli import main
from s2robot.datasets.store import EpisodeStore
from test_dataset_core import build_store

ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}}


def write_robomimic(path, lengths=(4, 6, 5)) -> dict[str, dict]:
    """A small file in robomimic's layout; returns the demos written (name -> arrays)."""
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        for i, t in zip((0, 10, 2), lengths):  # demo_10 sorts after demo_2 numerically
            name = f"demo_{i}"
            d = {
                "obs/agentview_image": rng.integers(0, 255, (t, 12, 12, 3), dtype=np.uint8),
                "obs/robot0_eye_in_hand_image": rng.integers(0, 255, (t, 12, 12, 3), dtype=np.uint8),
                "obs/robot0_eef_pos": rng.normal(size=(t, 3)),
                "obs/robot0_gripper_qpos": rng.normal(size=(t, 2)),
                "obs/object": rng.normal(size=(t, 4)).astype(np.float32),
                "actions": rng.uniform(-1, 1, (t, 7)),
                "rewards": (np.arange(t) == t - 1).astype(np.float64),
                "dones": (np.arange(t) == t - 1).astype(np.int64),
                "states": rng.normal(size=(t, 9)),
            }
            g = data.create_group(name)
            g.attrs["num_samples"] = t
            for k, v in d.items():
                g.create_dataset(k, data=v)
            demos[name] = d
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_0", b"demo_10"]))
        mask.create_dataset("valid", data=np.array([b"demo_2"]))
    return demos


def test_import_robomimic_roundtrip(tmp_path, capsys):
    src, dst = tmp_path / "rm.hdf5", tmp_path / "out.zarr"
    demos = write_robomimic(src)
    assert main(["dataset", "import-robomimic", str(src), str(dst),
                 "--proprio-keys", "robot0_eef_pos,robot0_gripper_qpos"]) == 0
    assert "imported 3 episodes, 15 steps" in capsys.readouterr().out
    store = EpisodeStore.open(dst)
    attrs = store.attrs
    assert attrs["task"] == "Lift" and attrs["env_kwargs"] == ENV_ARGS["env_kwargs"] and attrs["fps"] == 20
    assert attrs["cameras"] == ["agentview", "robot0_eye_in_hand"]
    assert attrs["source_demos"] == ["demo_0", "demo_2", "demo_10"]
    assert attrs["filters"] == {"train": [0, 2], "valid": [1]}
    assert attrs["action_space"]["dim"] == 7
    assert attrs["proprio_layout"] == [{"key": "robot0_eef_pos", "start": 0, "stop": 3},
                                       {"key": "robot0_gripper_qpos", "start": 3, "stop": 5}]
    for i, name in enumerate(attrs["source_demos"]):
        d, ep = demos[name], store.get_episode(i)
        np.testing.assert_array_equal(ep["agentview_image"], d["obs/agentview_image"])
        np.testing.assert_array_equal(ep["robot0_eye_in_hand_image"], d["obs/robot0_eye_in_hand_image"])
        for k in ("robot0_eef_pos", "robot0_gripper_qpos", "object"):
            np.testing.assert_array_equal(ep[f"obs_{k}"], d[f"obs/{k}"].astype(np.float32))
        np.testing.assert_array_equal(
            ep["proprio"], np.concatenate([d["obs/robot0_eef_pos"], d["obs/robot0_gripper_qpos"]], 1).astype(np.float32))
        np.testing.assert_array_equal(ep["action"], d["actions"].astype(np.float32))
        np.testing.assert_array_equal(ep["reward"], d["rewards"].astype(np.float32))
        np.testing.assert_array_equal(ep["success"], d["dones"].astype(bool))
        np.testing.assert_array_equal(ep["sim_state"], d["states"])
        assert ep["sim_state"].dtype == np.float64


def test_import_robomimic_errors(tmp_path):
    from s2robot.datasets.robomimic_import import import_robomimic
    from s2robot.datasets.store import DatasetError

    with pytest.raises(FileNotFoundError, match="robomimic dataset not found"):
        import_robomimic(tmp_path / "missing.hdf5", tmp_path / "o.zarr")
    src = tmp_path / "rm.hdf5"
    write_robomimic(src, lengths=(3, 3, 3))
    with pytest.raises(DatasetError, match="not low-dim obs keys"):
        import_robomimic(src, tmp_path / "o.zarr", proprio_keys=["agentview_image"], progress=False)
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(DatasetError, match="not a robomimic dataset"):
        import_robomimic(tmp_path / "bad.hdf5", tmp_path / "o2.zarr", progress=False)


def test_dataset_info_cli(tmp_path, capsys):
    from test_dataset_features import FakeEncoder
    from s2robot.datasets.feature_cache import cache_features

    path = tmp_path / "d.zarr"
    build_store(path)
    key = cache_features(path, FakeEncoder(), device="cpu", progress=False)
    assert main(["dataset", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "episodes: 4   steps: 33" in out
    assert "data/front_image" in out and "(33, 8, 8, 3)" in out and "uint8" in out
    assert "data/proprio" in out and "float32" in out
    assert f"{key}: encoder=fake" in out and "front 33/33" in out
    assert "size on disk:" in out and "compression ratio:" in out
    assert main(["dataset", "info", str(tmp_path / "missing.zarr")]) == 1  # one line on stderr, no traceback
    assert capsys.readouterr().err.strip().endswith("missing.zarr does not exist")
