"""`s2robot dataset export-lerobot`: the v3.0 files it writes, the round trip store -> LeRobot -> store, and (where a
side venv with the real lerobot exists) that ``lerobot.datasets.lerobot_dataset.LeRobotDataset`` opens the export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from s2robot.cli import main
from s2robot.datasets.store import EpisodeStore
from s2robot.datasets.video_io import psnr

LENGTHS = (7, 11, 5)
# Default export codec libsvtav1 crf=30 on these smooth 32x48 pictures: measured 33-37 dB per episode.
PSNR_BOUND_DB = 30.0
SIDE_PYTHON_ENV = "S2ROBOT_LEROBOT_PYTHON"
DEFAULT_SIDE_PYTHON = "/work/venvs/lerobot/bin/python"


def smooth_frames(n: int, seed: int, h: int = 32, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    img = np.stack([128 + 90 * np.sin((xx + 2 * t + seed) / 7.0), 128 + 90 * np.cos((yy + t) / 6.0),
                    np.broadcast_to(60.0 + 20 * seed, (n, h, w))], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_store(path: Path, with_tasks: bool = False) -> EpisodeStore:
    rng = np.random.default_rng(1)
    attrs = {"task": "lift_cube", "fps": 10.0, "cameras": ["front", "wrist"],
             "proprio_layout": ["x", "y", "z", "grip"], "action_space": {"layout": ["dx", "dy", "dz"]}}
    if with_tasks:
        attrs["tasks"] = ["lift the cube", "stack the cube"]
    store = EpisodeStore.create(path, attrs=attrs)
    for i, n in enumerate(LENGTHS):
        ep = {"front_image": smooth_frames(n, i), "wrist_image": smooth_frames(n, i + 5, 16, 16),
              "proprio": rng.normal(size=(n, 4)).astype(np.float32),
              "action": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
              "reward": rng.uniform(size=n).astype(np.float32)}
        if with_tasks:
            ep["task_index"] = np.full(n, i % 2, np.int64)
        store.append_episode(ep)
    return store


def export(store_path, out, *extra) -> Path:
    assert main(["dataset", "export-lerobot", str(store_path), str(out), "--no-progress", *extra]) == 0
    return Path(out)


def test_export_writes_lerobot_v30_layout(tmp_path):
    store = build_store(tmp_path / "s.zarr")
    out = export(tmp_path / "s.zarr", tmp_path / "lr", "--map", "reward=next.reward")
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 1
    feats = info["features"]
    assert feats["observation.images.front"]["dtype"] == "video" and feats["observation.images.front"]["shape"] == [
        32, 48, 3]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "grip"]}
    assert feats["action"]["names"] == ["dx", "dy", "dz"] and feats["next.reward"]["shape"] == [1]
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    np.testing.assert_array_equal(np.stack(data.column("observation.state").to_numpy(zero_copy_only=False)),
                                  store.array("proprio")[:])
    np.testing.assert_array_equal(data.column("index").to_numpy(), np.arange(sum(LENGTHS)))
    np.testing.assert_array_equal(data.column("frame_index").to_numpy(), np.concatenate([np.arange(n) for n in LENGTHS]))
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_to_index"] for e in eps] == np.cumsum(LENGTHS).tolist()
    assert [e["videos/observation.images.front/from_timestamp"] for e in eps] == pytest.approx([0, 0.7, 1.8])
    assert eps[0]["tasks"] == ["lift_cube"]
    stats = json.loads((out / "meta/stats.json").read_text())
    proprio = store.array("proprio")[:].astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], proprio.mean(0))
    np.testing.assert_allclose(stats["observation.state"]["q99"], np.quantile(proprio, 0.99, axis=0))
    front = store.array("front_image")[:] / 255.0
    assert np.asarray(stats["observation.images.front"]["std"]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.asarray(stats["observation.images.front"]["mean"])[:, 0, 0],
                               front.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(np.asarray(stats["observation.images.front"]["q50"])[:, 0, 0],
                               np.quantile(front.reshape(-1, 3), 0.5, axis=0, method="inverted_cdf"))


@pytest.mark.parametrize("with_tasks", [False, True])
def test_round_trip_store_lerobot_store(tmp_path, with_tasks):
    store = build_store(tmp_path / "s.zarr", with_tasks=with_tasks)
    export(tmp_path / "s.zarr", tmp_path / "lr")
    assert main(["dataset", "import-lerobot", str(tmp_path / "lr"), str(tmp_path / "back.zarr"), "--no-progress"]) == 0
    back = EpisodeStore.open(tmp_path / "back.zarr")
    np.testing.assert_array_equal(back.episode_ends, store.episode_ends)
    assert back.attrs["fps"] == store.attrs["fps"]
    assert back.attrs["cameras"] == ["front", "wrist"]
    np.testing.assert_array_equal(back.array("proprio")[:], store.array("proprio")[:])
    np.testing.assert_array_equal(back.array("action")[:], store.array("action")[:])
    if with_tasks:
        assert back.attrs["tasks"] == ["lift the cube", "stack the cube"]
        np.testing.assert_array_equal(back.array("task_index")[:], store.array("task_index")[:])
    else:
        assert back.attrs["task"] == "lift_cube"
    for cam in ("front", "wrist"):
        for e in range(store.n_episodes):
            a, b = store.get_episode(e, [f"{cam}_image"]), back.get_episode(e, [f"{cam}_image"])
            assert psnr(a[f"{cam}_image"], b[f"{cam}_image"]) > PSNR_BOUND_DB, (cam, e)
    # and out again: the recorded key map sends the keys back to their LeRobot names
    again = export(tmp_path / "back.zarr", tmp_path / "lr2")
    assert set(json.loads((again / "meta/info.json").read_text())["features"]) == set(
        json.loads((tmp_path / "lr/meta/info.json").read_text())["features"])


def test_export_errors_are_one_line(tmp_path):
    build_store(tmp_path / "s.zarr")
    for argv, want in [
        (["--map", "velocity=observation.velocity"], "no data key 'velocity' to export"),
        (["--vcodec", "no-such-codec"], "video codec 'no-such-codec' is not available"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["dataset", "export-lerobot", str(tmp_path / "s.zarr"), str(tmp_path / "lr"), "--no-progress", *argv])
        msg = str(exc.value.code)
        assert want in msg and "\n" not in msg
        assert not (tmp_path / "lr").exists()  # no half-written dataset left behind
    export(tmp_path / "s.zarr", tmp_path / "lr")
    with pytest.raises(SystemExit, match="already exists"):
        main(["dataset", "export-lerobot", str(tmp_path / "s.zarr"), str(tmp_path / "lr")])


def side_python(cwd: Path) -> str | None:
    """An interpreter that imports the real lerobot (its 0.6 releases need Python >= 3.12, so a side venv).
    Run outside the repository root, whose ``datasets/`` folder would shadow Hugging Face ``datasets``."""
    exe = os.environ.get(SIDE_PYTHON_ENV, DEFAULT_SIDE_PYTHON)
    if not Path(exe).is_file():
        return None
    probe = subprocess.run([exe, "-c", "import lerobot.datasets.lerobot_dataset"], capture_output=True, timeout=300,
                           cwd=cwd)
    return exe if probe.returncode == 0 else None


def test_lerobot_dataset_opens_export(tmp_path):
    exe = side_python(tmp_path)
    if exe is None:
        pytest.skip(f"no interpreter with lerobot: set {SIDE_PYTHON_ENV} to a venv's python that has lerobot "
                    f"(default {DEFAULT_SIDE_PYTHON}; see scripts/make_lerobot_fixtures.py)")
    store = build_store(tmp_path / "s.zarr", with_tasks=True)
    out = export(tmp_path / "s.zarr", tmp_path / "lr")
    arrays = {"episode_ends": store.episode_ends, "observation/state": store.array("proprio")[:],
              "action": store.array("action")[:], "observation/images/front": store.array("front_image")[:],
              "observation/images/wrist": store.array("wrist_image")[:]}
    np.savez(tmp_path / "expected.npz", **arrays)
    check = Path(__file__).parent / "lerobot_side_check.py"
    proc = subprocess.run([exe, str(check), str(out), str(tmp_path / "expected.npz")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("LeRobotDataset on the export:", result, file=sys.stderr)
    assert result["fps"] == 10 and result["num_episodes"] == 3 and result["num_frames"] == sum(LENGTHS)
    assert result["episode_ends_match"] and result["tasks"] == ["lift the cube", "stack the cube"]
    assert result["task_of_first_item"] == "lift the cube"
    assert result["max_abs_diff"] == {"observation.state": 0.0, "action": 0.0}
    assert min(result["min_psnr_db"].values()) > PSNR_BOUND_DB - 2  # per frame, not per episode
    assert {"observation.state", "action", "observation.images.front"} <= set(result["stats_keys"])
