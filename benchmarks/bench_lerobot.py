"""LeRobot data in: ``s2robot dataset import-lerobot`` throughput vs LeRobot's own data loader, side by side.

One run, synthetic render-like data (``bench_dataset.synthetic_episode``) in a temp dir, deleted afterwards:

1. a store of ``--episodes`` x ``--steps`` with two ``--size`` px cameras is exported to a LeRobot v3.0 dataset
   (``export-lerobot``: libsvtav1, crf 30, g 2, preset 12: LeRobot's own encoder defaults);
2. ``import-lerobot`` decodes it back into a store: frames/s (a frame = one step, both cameras decoded);
3. one training epoch over the imported store with ``SequenceDataset`` (batched reads, uint8 images): frames/s;
4. one epoch of LeRobot's loader on the same dataset: ``LeRobotDataset(root, video_backend="pyav")`` in a
   ``torch.utils.data.DataLoader`` (shuffle, ``--batch``, ``--workers``): frames/s. It runs in the interpreter named
   by ``--lerobot-python`` (default ``$S2ROBOT_LEROBOT_PYTHON`` or /work/venvs/lerobot/bin/python: lerobot 0.6
   needs Python >= 3.12) and is skipped, saying so, where none imports lerobot.

    OMP_NUM_THREADS=2 python benchmarks/bench_lerobot.py [--episodes 20 --steps 50 --size 96 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_dataset import pin_threads, synthetic_episode  # noqa: E402

LEROBOT_EPOCH = r"""
import json, sys, time
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, batch, workers, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
ds = LeRobotDataset("bench/lerobot", root=root, video_backend="pyav")
loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                     generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter(); n = 0
for item in loader:
    n += len(item["index"])
print(json.dumps({"frames": n, "seconds": time.perf_counter() - t0, "backend": ds._video_backend
                  if hasattr(ds, "_video_backend") else "pyav"}))
"""


def build_store(path: Path, episodes: int, steps: int, size: int) -> None:
    from s2robot.datasets.store import EpisodeStore

    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, attrs={"task": "bench task", "fps": 10, "cameras": ["front", "wrist"]})
    for _ in range(episodes):
        ep = synthetic_episode(rng, steps, size)
        store.append_episode({k: ep[k] for k in ("front_image", "wrist_image", "proprio", "action")})


def our_epoch(path: Path, batch: int) -> tuple[int, float]:
    """One shuffled epoch of (image + low-dim) windows through SequenceDataset.get_batch; returns (frames, s)."""
    from s2robot.datasets.sampler import SequenceDataset

    ds = SequenceDataset(path, horizon=1, n_obs_steps=1, n_action_steps=1, split="all")
    order = np.random.default_rng(0).permutation(len(ds))
    t0 = time.perf_counter()
    for s in range(0, len(order), batch):
        ds.get_batch(order[s : s + batch])
    return len(order), time.perf_counter() - t0


def lerobot_epoch(python: str | None, root: Path, batch: int, workers: int, threads: int) -> dict | str:
    if python is None or not Path(python).is_file():
        return f"skipped: no interpreter at {python!r} (set --lerobot-python)"
    proc = subprocess.run([python, "-c", LEROBOT_EPOCH, str(root), str(batch), str(workers), str(threads)],
                          capture_output=True, text=True, cwd=root.parent,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return f"skipped: lerobot run failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for LeRobot's loader")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lerobot-python", default=os.environ.get("S2ROBOT_LEROBOT_PYTHON",
                                                              "/work/venvs/lerobot/bin/python"))
    args = p.parse_args()
    pin_threads(args.threads)
    from s2robot.datasets.lerobot_export import export_lerobot
    from s2robot.datasets.lerobot_import import import_lerobot

    frames = args.episodes * args.steps
    print(f"load average at start: {os.getloadavg()}  ({os.cpu_count()} CPUs)")
    print(f"dataset: {args.episodes} episodes x {args.steps} steps = {frames} frames, cameras front+wrist "
          f"{args.size}x{args.size}, threads {args.threads}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_lerobot_"))
    try:
        build_store(tmp / "src.zarr", args.episodes, args.steps, args.size)
        t0 = time.perf_counter()
        export_lerobot(tmp / "src.zarr", tmp / "lerobot", progress=False)
        t_export = time.perf_counter() - t0
        mb = sum(f.stat().st_size for f in (tmp / "lerobot").rglob("*") if f.is_file()) / 2**20
        t0 = time.perf_counter()
        import_lerobot(tmp / "lerobot", tmp / "imported.zarr", progress=False)
        t_import = time.perf_counter() - t0
        n_ours, t_ours = our_epoch(tmp / "imported.zarr", args.batch)
        lr = lerobot_epoch(args.lerobot_python, tmp / "lerobot", args.batch, args.workers, args.threads)
        print(f"export-lerobot (libsvtav1 crf 30, {mb:.1f} MiB): {frames / t_export:8.1f} frames/s ({t_export:.1f} s)")
        print(f"import-lerobot (PyAV decode -> zarr): {frames / t_import:8.1f} frames/s ({t_import:.1f} s, once)")
        print(f"epoch, SequenceDataset on the imported store: {n_ours / t_ours:8.1f} frames/s ({t_ours:.2f} s)")
        if isinstance(lr, str):
            print(f"epoch, LeRobotDataset + DataLoader: {lr}")
        else:
            r = lr["frames"] / lr["seconds"]
            print(f"epoch, LeRobotDataset + DataLoader ({lr['backend']}, batch {args.batch}, workers {args.workers}): "
                  f"{r:8.1f} frames/s ({lr['seconds']:.1f} s)")
            print(f"ratios: import once / LeRobot epoch = {(frames / t_import) / r:.2f}x frames/s; "
                  f"epoch on the store / LeRobot epoch = {(n_ours / t_ours) / r:.1f}x; "
                  f"import pays for itself after {t_import / max(lr['seconds'] - t_ours, 1e-9):.2f} epochs")
        print(f"load average at end: {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
