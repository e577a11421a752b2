"""Open a LeRobot dataset root with the real ``lerobot`` package and compare every item to expected arrays.

Run by ``tests/test_lerobot_export.py`` with the interpreter of a side venv that has lerobot (lerobot 0.6.1 needs
Python >= 3.12, so it cannot live in the project venv):

    python tests/lerobot_side_check.py ROOT EXPECTED.npz

``EXPECTED.npz`` holds ``episode_ends`` and, per LeRobot feature name (``/`` for ``.``), the values of every frame.
Prints one JSON line: the dataset's fps, episode count, frame count, tasks, the largest low-dim difference and the
lowest per-frame PSNR of each camera.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(root: str, expected_path: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    expected = dict(np.load(expected_path))
    ends = expected.pop("episode_ends")
    ds = LeRobotDataset("s2robot/export", root=root, video_backend="pyav")
    keys = {k.replace("/", "."): v for k, v in expected.items()}
    worst_diff = {k: 0.0 for k in keys if keys[k].dtype != np.uint8}
    worst_psnr = {k: float("inf") for k in keys if keys[k].dtype == np.uint8}
    episode_index = []
    for i in range(len(ds)):
        item = ds[i]
        episode_index.append(int(item["episode_index"]))
        for k in worst_diff:
            worst_diff[k] = max(worst_diff[k], float(np.abs(item[k].numpy() - keys[k][i]).max()))
        for k in worst_psnr:
            got = (item[k].numpy().transpose(1, 2, 0) * 255.0).round().clip(0, 255)  # (C, H, W) float in [0, 1]
            mse = float(np.mean((got - keys[k][i].astype(np.float64)) ** 2))
            worst_psnr[k] = min(worst_psnr[k], 10 * np.log10(255.0**2 / max(mse, 1e-12)))
    lengths = np.bincount(episode_index).tolist()
    print(json.dumps({
        "fps": ds.fps, "num_episodes": ds.num_episodes, "num_frames": ds.num_frames,
        "episode_ends_match": bool(np.array_equal(np.cumsum(lengths), ends)),
        "tasks": sorted(ds.meta.tasks.index.tolist()), "max_abs_diff": worst_diff, "min_psnr_db": worst_psnr,
        "stats_keys": sorted(ds.meta.stats) if ds.meta.stats else [],
        "task_of_first_item": ds[0]["task"],
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
