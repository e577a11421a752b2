"""Policy benchmark (CPU): training steps/s on cached features vs online encoding, and the latency of one action
chunk (diffusion U-Net with DDIM 10 / 100 steps, BC-MLP), measured side by side in one run.

    python benchmarks/bench_policy.py [--encoder mobilenet_v2] [--image-size 96] [--batch 16] [--threads 1]

Training steps use the real pipeline pieces: ``SequenceDataset.get_batch`` from a synthetic zarr store (cached
``features/<hash>`` vs ``<cam>_image``), ``compute_loss``, backward, AdamW step. Policies use the shipped
``configs/policy/*.yaml`` as shipped, optimiser as in training (fused AdamW).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timeit(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per mode")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (1: stable on a shared CPU)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(args.threads)
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.normalizer import Normalizer
    from s2robot.datasets.sampler import SequenceDataset
    from s2robot.datasets.store import EpisodeStore
    from s2robot.encoders import build_encoder
    from s2robot.policies import ShapeMeta, build_policy
    from s2robot.training.optim import OptimConfig, build_optimizer

    cfg_dir = Path(__file__).resolve().parents[1] / "configs"
    enc_cfg = OmegaConf.to_container(OmegaConf.load(cfg_dir / "encoder" / f"{args.encoder}.yaml"))
    encoder = build_encoder(**enc_cfg)
    cams, P, A, S = ("front", "wrist"), 9, 7, args.image_size
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        store = EpisodeStore.create(path, attrs={"task": "bench", "cameras": list(cams)})
        for _ in range(2):
            T = 60
            ep = {f"{c}_image": rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8) for c in cams}
            ep.update(proprio=rng.normal(size=(T, P)).astype(np.float32), action=rng.normal(size=(T, A)).astype(np.float32))
            store.append_episode(ep)
        store.close()
        t0 = time.perf_counter()
        key = cache_features(path, encoder, device="cpu", progress=False)
        cache_s = time.perf_counter() - t0
        n_frames = 2 * 60 * len(cams)
        norm = Normalizer().fit({"action": rng.normal(size=(100, A)), "proprio": rng.normal(size=(100, P))})
        meta = ShapeMeta(cameras=list(cams), proprio_dim=P, action_dim=A, image_shape=[S, S, 3],
                         token_shape=[encoder.num_tokens, encoder.out_dim], num_prefix=encoder.num_prefix)
        pcfg = OmegaConf.to_container(OmegaConf.load(cfg_dir / "policy" / "diffusion_unet.yaml"))
        keys = [f"{c}_image" for c in cams] + ["proprio"]
        rows = []
        for mode, fh in (("cached features", key), ("online encoding", None)):
            torch.manual_seed(0)
            policy = build_policy(pcfg, meta, norm, encoder).train()
            opt = build_optimizer(policy.trainable_named_parameters(), OptimConfig())
            ds = SequenceDataset(path, horizon=16, n_obs_steps=2, n_action_steps=8, obs_keys=keys, feature_hash=fh,
                                 split="all")
            order = np.random.default_rng(0).permutation(len(ds))

            def step(i=[0]):
                idx = order[(i[0] * args.batch) % (len(ds) - args.batch):][: args.batch]
                i[0] += 1
                loss = policy.compute_loss(ds.get_batch(idx))
                opt.zero_grad()
                loss.backward()
                opt.step()

            rows.append((mode, 1.0 / _timeit(step, args.steps)))
        print(f"# bench_policy  encoder={args.encoder} (N={encoder.num_tokens}, D={encoder.out_dim}, scales="
              f"{list(encoder.scales)})  images {S}px x {len(cams)} cams  batch={args.batch}  threads={args.threads}  "
              f"torch {torch.__version__}  CPU")
        print(f"feature cache: {n_frames} frames in {cache_s:.1f} s ({n_frames / cache_s:.1f} frames/s)")
        print("\n## training (diffusion_unet as configured)\n| mode | steps/s |\n|---|---|")
        for mode, sps in rows:
            print(f"| {mode} | {sps:.3f} |")
        print(f"speed-up of cached features: {rows[0][1] / rows[1][1]:.1f}x")

        g = torch.Generator().manual_seed(0)
        obs_tok = {f"{c}_tokens": torch.randn(1, 2, encoder.num_tokens, encoder.out_dim, generator=g) for c in cams}
        obs_tok["proprio"] = torch.randn(1, 2, P, generator=g)
        obs_img = {f"{c}_image": torch.randint(0, 256, (1, 2, S, S, 3), dtype=torch.uint8, generator=g) for c in cams}
        obs_img["proprio"] = obs_tok["proprio"]
        print("\n## inference: one action chunk, batch 1\n| policy | input | ms |\n|---|---|---|")
        lat = {}
        for name, steps in (("diffusion_unet", 10), ("diffusion_unet", 100), ("bc_mlp", None)):
            pc = OmegaConf.to_container(OmegaConf.load(cfg_dir / "policy" / f"{name}.yaml"))
            if steps:
                pc["num_inference_steps"] = steps
            policy = build_policy(pc, meta, norm, encoder).eval()
            label = f"{name}" + (f" DDIM {steps}" if steps else "")
            with torch.inference_mode():
                for inp, obs in (("cached tokens", obs_tok), ("raw images", obs_img)):
                    ms = 1000 * _timeit(lambda: policy.predict_action(obs), reps=5 if (steps or 0) < 100 else 3)
                    lat[(label, inp)] = ms
                    print(f"| {label} | {inp} | {ms:.1f} |")
        d10, d100 = lat[("diffusion_unet DDIM 10", "cached tokens")], lat[("diffusion_unet DDIM 100", "cached tokens")]
        print(f"DDIM 100 / DDIM 10 latency: {d100 / d10:.1f}x; DDIM 10 / BC-MLP: "
              f"{d10 / lat[('bc_mlp', 'cached tokens')]:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
