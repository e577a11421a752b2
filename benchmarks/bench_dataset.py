"""Dataset throughput, measured side by side in one run (synthetic data in a temp dir, deleted afterwards).

1. Sampler windows/s on a store of ``--episodes`` x ``--steps`` (default 100 x 100) with two 128x128 cameras:
   ``SequenceDataset`` (batched reads, low-dim in RAM) vs a straightforward baseline that slices every zarr array
   per sample; for images + low-dim and for cached tokens + low-dim.
2. Training-batch throughput for ViT-S/16 S2 scales (1, 2) (``mvp_vit_s16``, random init): batches of cached
   tokens from the store vs loading images and running the encoder online (the work the cache saves).
3. ``--sweep``: image chunking/codec choices (write speed, compression, random window reads).

    OMP_NUM_THREADS=2 python benchmarks/bench_dataset.py [--episodes 100 --steps 100 --threads 2 --sweep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def pin_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)
    import numcodecs.blosc
    import torch

    torch.set_num_threads(n)
    numcodecs.blosc.set_nthreads(n)


def synthetic_episode(rng: np.random.Generator, t: int, size: int = 128) -> dict[str, np.ndarray]:
    """Render-like frames (shaded textured background, moving flat-coloured squares, no sensor noise; MuJoCo
    renders are noise-free) and random low-dim data."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ep = {}
    for cam in ("front", "wrist"):
        texture = 12 * np.sin(xx * rng.uniform(20, 40)) * np.cos(yy * rng.uniform(20, 40))
        base = np.stack([yy * 120 + 60 + texture, xx * 100 + 40 + texture, (1 - yy) * 80 + 50], -1)
        frames = np.repeat(base[None], t, 0)
        for _ in range(3):
            cx = (rng.uniform(0.2, 0.8) + 0.3 * np.sin(np.linspace(0, rng.uniform(1, 4), t))) * size
            cy = rng.uniform(0.2, 0.8) * size + np.linspace(0, rng.uniform(-20, 20), t)
            inside = (np.abs(xx[None] * size - cx[:, None, None]) < 10) & (np.abs(yy[None] * size - cy[:, None, None]) < 10)
            frames[inside] = rng.uniform(0, 255, 3)
        ep[f"{cam}_image"] = np.clip(frames, 0, 255).astype(np.uint8)
    ep["proprio"] = rng.normal(size=(t, 9)).astype(np.float32)
    ep["action"] = rng.normal(size=(t, 7)).astype(np.float32)
    ep["reward"] = rng.random(t).astype(np.float32)
    ep["success"] = np.arange(t) == t - 1
    return ep


def build_store(path: Path, episodes: int, steps: int, seed: int = 0) -> float:
    from s2robot.datasets.store import EpisodeStore

    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, attrs={"task": "bench", "fps": 10, "cameras": ["front", "wrist"]})
    spent = 0.0
    for _ in range(episodes):
        ep = synthetic_episode(rng, steps)
        t0 = time.perf_counter()
        store.append_episode(ep)
        spent += time.perf_counter() - t0
    return spent


class ShapeEncoder:
    """Stand-in with a real encoder's attributes and token shape; emits random tokens (to fill a cache fast)."""

    def __init__(self, real):
        for name in ("config_hash", "config", "out_dim", "num_tokens", "grid", "num_prefix"):
            setattr(self, name, getattr(real, name))

    def encode(self, images):
        import torch

        return torch.randn(len(images), self.num_tokens, self.out_dim)


def baseline_window(arrays: dict, ds, i: int) -> dict[str, np.ndarray]:
    """Straightforward per-sample read: slice each zarr array for the window, edge-pad with numpy."""
    start, length, rel = (int(v) for v in ds.windows[i])
    out = {}
    for key, arr in arrays.items():
        n = ds.horizon if key == ds.action_key else ds.n_obs_steps
        lo, hi = max(rel, 0), min(rel + n, length)
        block = np.asarray(arr[start + lo : start + hi])
        idx = np.clip(np.arange(rel, rel + n), 0, length - 1) - lo
        out[key] = block[idx]
    return out


def rate(fn, n_items: int, min_time: float = 2.0) -> float:
    """Items per second of ``fn()`` (each call handles ``n_items``), repeated for at least ``min_time`` s."""
    fn()  # warm-up (opens handles, fills RAM caches)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        el = time.perf_counter() - t0
        if el >= min_time:
            return calls * n_items / el


def sampler_rows(path: Path, feature_hash: str | None, batch: int, seed: int = 0) -> list[tuple[str, float]]:
    from s2robot.datasets.sampler import SequenceDataset

    ds = SequenceDataset(path, horizon=16, n_obs_steps=2, n_action_steps=8, feature_hash=feature_hash, split="all")
    rng = np.random.default_rng(seed)
    arrays = {k: ds._array(k) for k in ds.obs_keys + [ds.action_key]}
    import zarr

    raw = {k: zarr.open_array(Path(path) / ds._sources[k], mode="r") for k in arrays}
    what = "tokens" if feature_hash else "images"
    return [
        (f"baseline per-sample zarr slicing ({what} + low-dim)",
         rate(lambda: [baseline_window(raw, ds, int(i)) for i in rng.integers(0, len(ds), 32)], 32)),
        (f"SequenceDataset per item ds[i] ({what} + low-dim)",
         rate(lambda: [ds[int(i)] for i in rng.integers(0, len(ds), 32)], 32)),
        (f"SequenceDataset batched get_batch B={batch} ({what} + low-dim)",
         rate(lambda: ds.get_batch(rng.integers(0, len(ds), batch)), batch)),
    ]


def training_rows(path: Path, real, cached_key: str, batch: int) -> list[tuple[str, float]]:
    """windows/s of ready-to-train token batches: cached tokens vs images + online S2 encoding."""
    import torch

    from s2robot.datasets.sampler import SequenceDataset

    kw = dict(horizon=16, n_obs_steps=2, n_action_steps=8, split="all")
    ds_img = SequenceDataset(path, **kw)
    ds_tok = SequenceDataset(path, feature_hash=cached_key, **kw)
    rng = np.random.default_rng(1)
    cams = ("front", "wrist")

    def online():
        b = ds_img.get_batch(rng.integers(0, len(ds_img), batch))
        with torch.inference_mode():
            for c in cams:
                imgs = b[f"{c}_image"]
                b[f"{c}_tokens"] = real.encode(imgs.flatten(0, 1)).unflatten(0, imgs.shape[:2])
        return b

    def cached():
        return ds_tok.get_batch(rng.integers(0, len(ds_tok), batch))

    return [(f"online: images + S2 encode, B={batch}", rate(online, batch, min_time=5.0)),
            (f"cached float16 tokens, B={batch}", rate(cached, batch))]


def sweep(root: Path, episodes: int, steps: int):
    """Image chunk frames x codec: write s, compression ratio, random window reads/s."""
    from s2robot.datasets import store as store_mod
    from s2robot.datasets.sampler import SequenceDataset

    defaults = (store_mod.IMAGE_CHUNK_FRAMES, dict(store_mod.IMAGE_CODEC))
    try:
        for frames in (1, 4, 16):
            for codec in (dict(cname="lz4", clevel=5, shuffle="noshuffle"), dict(cname="zstd", clevel=1, shuffle="noshuffle"),
                          dict(cname="zstd", clevel=5, shuffle="noshuffle")):
                store_mod.IMAGE_CHUNK_FRAMES, store_mod.IMAGE_CODEC = frames, codec
                p = root / f"sweep_{frames}_{codec['cname']}{codec['clevel']}.zarr"
                wt = build_store(p, episodes, steps, seed=1)
                st = store_mod.EpisodeStore.open(p)
                a = st.array("front_image")
                ratio = a.nbytes / a.nbytes_stored()
                ds = SequenceDataset(p, horizon=16, n_obs_steps=2, n_action_steps=8, split="all")
                rng = np.random.default_rng(0)
                r = rate(lambda: ds.get_batch(rng.integers(0, len(ds), 64)), 64, min_time=1.5)
                mb = 2 * a.nbytes / 2**20
                shutil.rmtree(p)
                yield f"| {frames} | {codec['cname']} {codec['clevel']} | {mb / wt:.0f} | {ratio:.2f}x | {r:.0f} |"
    finally:
        store_mod.IMAGE_CHUNK_FRAMES, store_mod.IMAGE_CODEC = defaults


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-episodes", type=int, default=10, help="episodes given full-size cached tokens")
    parser.add_argument("--pool-grid", type=int, default=7, help="pooled grid for the cached tokens of section 1")
    parser.add_argument("--sweep", action="store_true", help="also sweep image chunking/codecs (20 episodes)")
    parser.add_argument("--skip-online", action="store_true")
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    import warnings

    import torch

    from s2robot.datasets.cli import size_on_disk
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.store import EpisodeStore
    from s2robot.encoders import build_encoder

    warnings.simplefilter("ignore")
    root = Path(tempfile.mkdtemp(prefix="s2robot_bench_"))
    try:
        print(f"threads={args.threads} torch={torch.__version__} cpu_count={os.cpu_count()} (shared machine: noisy)")
        path = root / "bench.zarr"
        wt = build_store(path, args.episodes, args.steps)
        st = EpisodeStore.open(path)
        raw = sum(st.array(k).nbytes for k in st.keys)
        disk = size_on_disk(path, st.group)
        print(f"store: {args.episodes} episodes x {args.steps} steps, 2 cams 128x128: write {wt:.1f} s "
              f"({raw / 2**20 / wt:.0f} MiB/s raw), {raw / 2**20:.0f} MiB raw -> {disk / 2**20:.0f} MiB on disk "
              f"({raw / disk:.2f}x)")

        real = build_encoder("mvp_vit_s16", scales=(1, 2))
        print(f"encoder mvp_vit_s16 S2 (1,2): tokens {real.num_tokens} x {real.out_dim}")
        t0 = time.perf_counter()
        key = cache_features(path, ShapeEncoder(real), pool_grid=args.pool_grid, batch_size=256, device="cpu",
                             progress=False)
        ct = time.perf_counter() - t0
        fdisk = sum(a.nbytes_stored() for _, a in st.group[f"features/{key}"].arrays())
        print(f"cache write (random tokens pooled to {args.pool_grid}x{args.pool_grid}, encoder excluded): "
              f"{2 * st.n_steps / ct:.0f} frames/s, {fdisk / 2**20:.0f} MiB")

        print("\n## 1. sampler windows/s (horizon 16, n_obs_steps 2; images uint8 / tokens float32 + proprio + action)")
        rows = sampler_rows(path, None, args.batch) + sampler_rows(path, key, args.batch)
        for name, r in rows:
            print(f"| {name:<62} | {r:>9.0f} |")
        print(f"speed-up batched vs baseline: images {rows[2][1] / rows[0][1]:.1f}x, tokens {rows[5][1] / rows[3][1]:.1f}x")

        if not args.skip_online:
            small = root / "train.zarr"
            src = EpisodeStore.open(path)
            dst = EpisodeStore.create(small, attrs=src.attrs | {"spec": {}})
            for i in range(min(args.train_episodes, src.n_episodes)):
                dst.append_episode(src.get_episode(i))
            full = cache_features(small, ShapeEncoder(real), batch_size=256, device="cpu", progress=False)
            print(f"\n## 2. training batches, mvp_vit_s16 S2 (1,2), tokens {real.num_tokens}x{real.out_dim} float16 "
                  f"({dst.n_steps} steps cached)")
            tr = training_rows(small, real, full, args.train_batch)
            for name, r in tr:
                print(f"| {name:<62} | {r:>9.2f} windows/s |")
            print(f"cached / online: {tr[1][1] / tr[0][1]:.0f}x (target >= 20x)")
        if args.sweep:
            print("\n## 3. image chunking sweep (20 episodes; write MiB/s raw, ratio, batched windows/s)")
            print("| frames/chunk | codec | write MiB/s | ratio | windows/s |")
            for row in sweep(root, 20, args.steps):
                print(row, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
