"""Write the small LeRobot datasets under ``tests/fixtures/lerobot/`` with the real ``lerobot`` package.

Run it with the interpreter of a venv that has lerobot installed (it is not a dependency of s2robot):

    # v3.0 (lerobot 0.6.1 needs Python >= 3.12):
    /work/venvs/lerobot/bin/python scripts/make_lerobot_fixtures.py tests/fixtures/lerobot
    # v2.1 (the last lerobot that writes v2.1 is 0.3.3, Python >= 3.10):
    /work/venvs/lerobot021/bin/python scripts/make_lerobot_fixtures.py tests/fixtures/lerobot
    # v3.0 with the cameras as PNG images inside the Parquet rows (no videos):
    /work/venvs/lerobot/bin/python scripts/make_lerobot_fixtures.py tests/fixtures/lerobot --images

Each run writes ``<out>/v30`` or ``<out>/v21`` (``v30_images`` with ``--images``) (by the installed lerobot's ``CODEBASE_VERSION``) plus
``<out>/<version>_expected.npz``: the exact per-frame arrays fed to ``add_frame`` (``front``/``wrist`` uint8 images,
``state``, ``action``, ``episode_ends``), which the tests compare the importer against (Parquet columns exactly,
video frames within a PSNR bound). The episode lengths, fps, tasks and image content are fixed (seeded), so the
arrays are reproducible; the MP4 bytes depend on the encoder build.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

FPS = 10
EPISODE_LENGTHS = (12, 9, 15)
TASKS = ("pick the red cube", "push the block left", "pick the red cube")
CAMERAS = {"front": (48, 64), "wrist": (32, 32)}  # (H, W); LeRobot's AV1 encoder wants even sizes
STATE_DIM, ACTION_DIM = 5, 4


def frame_image(h: int, w: int, t: int, ep: int, cam: int) -> np.ndarray:
    """A smooth (video-codec friendly) uint8 (H, W, 3) picture with a square that moves with ``t``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            96 + 80 * np.sin((xx + 3 * t) / (9.0 + cam)),
            96 + 80 * np.cos((yy + 2 * t + 5 * ep) / 11.0),
            np.full_like(xx, 40.0 + 30 * ep + 10 * cam),
        ],
        axis=-1,
    )
    s = max(4, h // 6)
    y0, x0 = (2 * t + 3 * ep) % (h - s), (3 * t + 5 * cam) % (w - s)
    img[y0 : y0 + s, x0 : x0 + s] = (230, 220, 60)
    return np.clip(img, 0, 255).astype(np.uint8)


def expected_arrays() -> dict[str, np.ndarray]:
    """Every frame's values, concatenated over episodes, as fed to ``add_frame``."""
    rng = np.random.default_rng(0)
    out: dict[str, list] = {"front": [], "wrist": [], "state": [], "action": []}
    for ep, n in enumerate(EPISODE_LENGTHS):
        for t in range(n):
            for c, (cam, (h, w)) in enumerate(CAMERAS.items()):
                out[cam].append(frame_image(h, w, t, ep, c))
        out["state"].append(rng.normal(size=(n, STATE_DIM)).astype(np.float32))
        out["action"].append(rng.uniform(-1, 1, size=(n, ACTION_DIM)).astype(np.float32))
    arrays = {k: (np.stack(v) if k in CAMERAS else np.concatenate(v)) for k, v in out.items()}
    arrays["episode_ends"] = np.cumsum(EPISODE_LENGTHS).astype(np.int64)
    return arrays


def features(kind: str = "video") -> dict:
    feats = {
        f"observation.images.{cam}": {"dtype": kind, "shape": (h, w, 3), "names": ["height", "width", "channels"]}
        for cam, (h, w) in CAMERAS.items()
    }
    feats["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,),
                                  "names": [f"joint_{i}" for i in range(STATE_DIM)]}
    feats["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz", "gripper"]}
    return feats


def write(root: Path, images: bool = False) -> str:
    from lerobot.datasets import lerobot_dataset as lrd
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    version = getattr(lrd, "CODEBASE_VERSION", None)
    if version is None:
        from lerobot.datasets.utils import CODEBASE_VERSION as version
    dst = root / (version.replace(".", "") + ("_images" if images else ""))
    if dst.exists():
        shutil.rmtree(dst)
    arrays = expected_arrays()
    ds = LeRobotDataset.create(repo_id=f"s2robot/fixture_{version}", fps=FPS,
                               features=features("image" if images else "video"), root=dst,
                               robot_type="s2robot_test_arm", use_videos=not images)
    start = 0
    for ep, n in enumerate(EPISODE_LENGTHS):
        for i in range(start, start + n):
            frame = {f"observation.images.{cam}": arrays[cam][i] for cam in CAMERAS}
            frame["observation.state"] = arrays["state"][i]
            frame["action"] = arrays["action"][i]
            if version == "v2.1":
                ds.add_frame(frame, task=TASKS[ep])
            else:
                ds.add_frame({**frame, "task": TASKS[ep]})
        ds.save_episode()
        start += n
    if hasattr(ds, "finalize"):
        ds.finalize()
    np.savez_compressed(root / f"{dst.name}_expected.npz", **arrays)
    return version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="fixture folder, e.g. tests/fixtures/lerobot")
    parser.add_argument("--images", action="store_true",
                        help="store cameras as PNG bytes in the Parquet rows (dtype image) instead of MP4 videos")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    version = write(args.out, images=args.images)
    print(f"wrote a LeRobot {version} dataset under {args.out}")


if __name__ == "__main__":
    main()
