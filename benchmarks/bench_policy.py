"""Policy benchmark (CPU): training steps/s on cached features vs online encoding, and the latency of one action
chunk (diffusion U-Net with DDIM 10 / 100 steps, BC-MLP), measured side by side in one run.

    python benchmarks/bench_policy.py [--encoder mobilenet_v2] [--image-size 96] [--batch 16] [--threads 1]
    python benchmarks/bench_policy.py --input-size 96 --latency-only   # the demo's encoder size, latency only
    python benchmarks/bench_policy.py --input-size 96 --latency-only --compile   # + torch.compile'd denoiser

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
    ap.add_argument("--input-size", type=int, default=None, help="encoder tile size (default: the config's)")
    ap.add_argument("--latency-only", action="store_true", help="skip the training-steps comparison")
    ap.add_argument("--cached-only", action="store_true",
                    help="only the cached-token training table: previous path vs in-RAM PCA-256 tokens")
    ap.add_argument("--train-batch", type=int, default=64, help="batch of the cached-token training table")
    ap.add_argument("--ddim-steps", default="10,100",
                    help="comma-separated DDIM step counts of the latency table (eval/deploy num_inference_steps=N)")
    ap.add_argument("--compile", action="store_true",
                    help="latency table: also the diffusion policies with compile_denoiser (and the compile time)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(args.threads)
    from s2robot.policies.normalizer import Normalizer
    from s2robot.encoders import build_encoder
    from s2robot.policies import ShapeMeta

    cfg_dir = Path(__file__).resolve().parents[1] / "configs"
    enc_cfg = OmegaConf.to_container(OmegaConf.load(cfg_dir / "encoder" / f"{args.encoder}.yaml"))
    if args.input_size:
        enc_cfg["input_size"] = args.input_size
    encoder = build_encoder(**enc_cfg)
    cams, P, A, S = ("front", "wrist"), 9, 7, args.image_size
    rng = np.random.default_rng(0)
    norm = Normalizer().fit({"action": rng.normal(size=(100, A)), "proprio": rng.normal(size=(100, P))})
    meta = ShapeMeta(cameras=list(cams), proprio_dim=P, action_dim=A, image_shape=[S, S, 3],
                     token_shape=[encoder.num_tokens, encoder.out_dim], num_prefix=encoder.num_prefix)
    print(f"# bench_policy  encoder={args.encoder} (N={encoder.num_tokens}, D={encoder.out_dim}, scales="
          f"{list(encoder.scales)}, input {encoder.input_size})  images {S}px x {len(cams)} cams  batch={args.batch}  "
          f"threads={args.threads}  torch {torch.__version__}  CPU  load {os.getloadavg()[0]:.2f}")
    if args.cached_only:
        cached_training_table(args, encoder, norm, cfg_dir, S, P, A, cams)
        return
    if not args.latency_only:
        cached_training_table(args, encoder, norm, cfg_dir, S, P, A, cams)
        training_table(args, encoder, meta, norm, cfg_dir, S, P, A, cams)
    latency_table(encoder, meta, norm, cfg_dir, S, P, cams, [int(k) for k in args.ddim_steps.split(",")],
                  args.compile)
    print(f"load after: {os.getloadavg()[0]:.2f}")


def training_table(args, encoder, meta, norm, cfg_dir, S, P, A, cams) -> None:
    """Feature caching time and training steps/s on cached features vs online encoding."""
    import torch
    from omegaconf import OmegaConf

    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.sampler import SequenceDataset
    from s2robot.datasets.store import EpisodeStore
    from s2robot.policies import build_policy
    from s2robot.training.optim import OptimConfig, build_optimizer

    rng = np.random.default_rng(1)
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
    print(f"feature cache ({encoder.engine_in_use} engine): {n_frames} frames in {cache_s:.1f} s "
          f"({n_frames / cache_s:.1f} frames/s)")
    print("\n## training (diffusion_unet as configured)\n| mode | steps/s |\n|---|---|")
    for mode, sps in rows:
        print(f"| {mode} | {sps:.3f} |")
    print(f"speed-up of cached features: {rows[0][1] / rows[1][1]:.1f}x")


def cached_training_table(args, encoder, norm, cfg_dir, S, P, A, cams, episodes: int = 20, T: int = 60) -> None:
    """Training steps/s on cached tokens at ``--train-batch``, BC-MLP and diffusion U-Net as shipped: the previous
    path (full-width float16 tokens read from the store's chunks per batch) vs the new one (tokens PCA-reduced to
    256 channels at cache time and held in RAM: a batch is a numpy gather), side by side."""
    import torch
    from omegaconf import OmegaConf

    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.sampler import SequenceDataset
    from s2robot.datasets.store import EpisodeStore
    from s2robot.datasets.token_reduction import load_projection, reduce_features
    from s2robot.policies import ShapeMeta, build_policy
    from s2robot.training.optim import OptimConfig, build_optimizer

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_cached.zarr"
        store = EpisodeStore.create(path, attrs={"task": "bench", "cameras": list(cams)})
        for _ in range(episodes):
            ep = {f"{c}_image": rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8) for c in cams}
            ep.update(proprio=rng.normal(size=(T, P)).astype(np.float32), action=rng.normal(size=(T, A)).astype(np.float32))
            store.append_episode(ep)
        store.close()
        full = cache_features(path, encoder, device="cpu", progress=False)
        reduced = reduce_features(path, full, 256, progress=False)
        import zarr

        proj = load_projection(zarr.open_group(str(path), mode="r")["features"][reduced])
        keys = [f"{c}_image" for c in cams] + ["proprio"]
        print(f"\n## training on cached tokens, batch {args.train_batch}, {args.threads} thread(s): previous path vs "
              f"in-RAM PCA-256 ({episodes * T} steps x {len(cams)} cams)\n| policy | previous: store chunks, "
              f"{encoder.out_dim} ch (steps/s) | now: RAM, 256 ch (steps/s) | speed-up |\n|---|---:|---:|---:|")
        for name in ("bc_mlp", "diffusion_unet"):
            pcfg = OmegaConf.to_container(OmegaConf.load(cfg_dir / "policy" / f"{name}.yaml"))
            rates = []
            for fh, ram, dim in ((full, 0, encoder.out_dim), (reduced, 4 << 30, 256)):
                meta = ShapeMeta(cameras=list(cams), proprio_dim=P, action_dim=A, image_shape=[S, S, 3],
                                 token_shape=[encoder.num_tokens, dim], num_prefix=encoder.num_prefix,
                                 token_reduce=None if dim == encoder.out_dim else
                                 {"method": "pca", "dim": dim, "in_dim": encoder.out_dim})
                torch.manual_seed(0)
                policy = build_policy(pcfg, meta, norm, encoder).train()
                if meta.token_reduce:
                    policy.obs_conditioner.set_token_projection(proj)
                opt = build_optimizer(policy.trainable_named_parameters(), OptimConfig())
                ds = SequenceDataset(path, horizon=policy.horizon, n_obs_steps=policy.n_obs_steps,
                                     n_action_steps=policy.n_action_steps, obs_keys=keys, feature_hash=fh,
                                     split="all", token_cache_bytes=ram)
                order = np.random.default_rng(0).permutation(len(ds))
                b = args.train_batch

                def step(i=[0]):
                    idx = order[(i[0] * b) % (len(ds) - b):][:b]
                    i[0] += 1
                    loss = policy.compute_loss(ds.get_batch(idx))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

                rates.append(1.0 / _timeit(step, max(args.steps, 10), warmup=3))
            print(f"| {name} | {rates[0]:.2f} | {rates[1]:.2f} | **{rates[1] / rates[0]:.1f}x** |")


def reference_predict(policy, obs):
    """The chunk as computed before the CPU inference work: encoder engine "torch", the U-Net's whole FiLM product
    and ``nn.Conv1d`` in every DDIM step (the previous ``DiffusionPolicy.predict_action`` loop)."""
    import torch

    from s2robot.policies.diffusion import DiffusionPolicy
    from s2robot.policies.unet1d import GemmConv1d

    enc = policy.obs_conditioner.token_encoder
    engine, enc.engine = enc.engine, "torch"
    convs = [m for m in policy.modules() if isinstance(m, GemmConv1d)]
    for m in convs:
        m.gemm = False
    try:
        if not isinstance(policy, DiffusionPolicy):
            return policy.predict_action(obs)
        cond, sched = policy._cond(obs), policy.inference_scheduler
        sched.set_timesteps(policy.num_inference_steps)
        x = torch.randn(cond.shape[0], policy.horizon, policy.action_dim)
        for t in sched.timesteps:
            x = sched.step(policy.denoiser(x, t.expand(cond.shape[0]), cond), t, x).prev_sample
        start = policy.n_obs_steps - 1
        return policy.unnormalize_action(x[:, start : start + policy.n_action_steps])
    finally:
        enc.engine = engine
        for m in convs:
            m.gemm = True


def latency_table(encoder, meta, norm, cfg_dir, S, P, cams, ddim_steps=(10, 100), compiled=False) -> None:
    """One action chunk at batch 1: reference path vs the current one, interleaved, median of the repeats; the
    diffusion U-Net at each DDIM step count of ``ddim_steps``. ``compiled``: also the current path with the
    denoiser through ``torch.compile`` (``compile_denoiser=true``), timed in the same interleaved loop, and the
    wall time of its first (compiling) chunk."""
    import torch
    from omegaconf import OmegaConf

    from s2robot.policies import build_policy
    from s2robot.encoders.engine import openvino_available
    from s2robot.policies.diffusion import set_compiled_denoiser

    g = torch.Generator().manual_seed(0)
    obs_tok = {f"{c}_tokens": torch.randn(1, 2, encoder.num_tokens, encoder.out_dim, generator=g) for c in cams}
    obs_tok["proprio"] = torch.randn(1, 2, P, generator=g)
    obs_img = {f"{c}_image": torch.randint(0, 256, (1, 2, S, S, 3), dtype=torch.uint8, generator=g) for c in cams}
    obs_img["proprio"] = obs_tok["proprio"]
    head = "| policy | input | reference ms | now ms | speed-up |"
    if compiled:
        head += " compiled ms | compiled vs now | first compiled chunk s |"
    print(f"\n## inference: one action chunk, batch 1 (engines now: encoder {encoder.engine_in_use}, U-Net steps "
          f"{'openvino' if openvino_available() else 'torch'})\n{head}\n"
          + "|---" * (head.count("|") - 1) + "|")
    for name, steps in [("diffusion_unet", k) for k in ddim_steps] + [("bc_mlp", None)]:
        pc = OmegaConf.to_container(OmegaConf.load(cfg_dir / "policy" / f"{name}.yaml"))
        if steps:
            pc["num_inference_steps"] = steps
        policy = build_policy(pc, meta, norm, encoder).eval()
        label = f"{name}" + (f" DDIM {steps}" if steps else "")
        fast = first = None
        if compiled and steps:
            set_compiled_denoiser(policy, True)
            fast, policy.compiled_denoiser = policy.compiled_denoiser, None  # switched on only while timed

        def chunk(obs, compiled_fn=None):
            policy.compiled_denoiser = compiled_fn
            t = time.perf_counter()
            policy.predict_action(obs)
            policy.compiled_denoiser = None
            return time.perf_counter() - t

        with torch.inference_mode():
            for inp, obs in (("cached tokens", obs_tok), ("raw images", obs_img)):
                reps = 7 if (steps or 0) < 100 else 3
                ref, now, comp = [], [], []
                policy.predict_action(obs), reference_predict(policy, obs)  # warm-up (engines build here)
                if fast is not None:
                    t = chunk(obs, fast)
                    first = t if first is None else first
                for _ in range(reps):
                    t = time.perf_counter()
                    reference_predict(policy, obs)
                    ref.append(time.perf_counter() - t)
                    now.append(chunk(obs))
                    if fast is not None:
                        comp.append(chunk(obs, fast))
                r, n = 1000 * statistics.median(ref), 1000 * statistics.median(now)
                row = f"| {label} | {inp} | {r:.1f} | {n:.1f} | {r / n:.2f}x |"
                if compiled:
                    c = 1000 * statistics.median(comp) if comp else None
                    row += f" {c:.1f} | {n / c:.2f}x | {first:.1f} |" if c else " - | - | - |"
                print(row)

if __name__ == "__main__":
    sys.exit(main())
