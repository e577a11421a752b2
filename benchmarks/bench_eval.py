"""Evaluation throughput: batched evaluator (N = 1, 2, 4, 8 env workers) vs a plain sequential loop.

Two policies: a fixed cheap policy (constant actions: the env-side ceiling) and the real S2 diffusion policy
(frozen encoder inside ``predict_action``, random weights: speed does not depend on training). Prints env-steps/s,
the speed-up over the sequential loop, and where the wall time goes (physics, rendering, policy inference).

    python benchmarks/bench_eval.py [--task lift_cube] [--image-size 96] [--encoder mobilenet_v2] [--ns 1,2,4,8]
    python benchmarks/bench_eval.py --device cuda --ns 16,32,64 --policies s2     # the GPU check
    python benchmarks/bench_eval.py --policies s2 --n-action-steps 1             # replanning every step

The S2 policy runs twice: "now" (this package) and "reference" (as computed before the CPU inference work:
plain PyTorch encoder, no kept history tokens, plain U-Net loop), side by side. Every run executes whole chunks
(``temporal_ensemble="off"``, as the sequential loop does); ``--n-action-steps 1`` replans every step instead.

Threads are pinned (1 BLAS/torch thread per process) so runs are comparable; on a shared machine the figures
are noisy. Physics/render fractions come from the env's own ``render_camera`` timing (workers sum theirs).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

# This process renders (the sequential baseline) and later builds torchvision models, which import triton. Mesa's
# llvmpipe and triton each bring an LLVM; loading triton's first avoids a segfault at that later import.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: E402,F401

import numpy as np  # noqa: E402
import torch  # noqa: E402


class ConstantPolicy(torch.nn.Module):
    """The cheapest possible policy: a zero action chunk (B, n_action_steps, A)."""

    n_obs_steps = 2
    n_action_steps = 8

    def __init__(self, action_dim: int):
        super().__init__()
        self.action_dim = action_dim

    def predict_action(self, obs, generators=None):
        return torch.zeros(obs["proprio"].shape[0], self.n_action_steps, self.action_dim)


class ReferencePolicy(torch.nn.Module):
    """The S2 policy computed as before the CPU inference work (``bench_policy.reference_predict``: encoder engine
    "torch", whole FiLM product and ``nn.Conv1d`` every DDIM step); no ``obs_conditioner`` attribute, so the evaluator
    feeds it raw images and re-encodes every history frame in every forward, as before."""

    def __init__(self, policy):
        super().__init__()
        self.inner = policy
        self.n_obs_steps, self.n_action_steps = policy.n_obs_steps, policy.n_action_steps
        self.shape_meta, self.obs_keys = policy.shape_meta, policy.obs_keys

    def predict_action(self, obs, generators=None):
        from bench_policy import reference_predict

        return reference_predict(self.inner, obs)


def build_s2_policy(task: str, image_size: int, encoder: str, device: str, input_size: int | None = None,
                    n_action_steps: int | None = None):
    """The real S2 diffusion U-Net policy (random weights) on a frozen ``encoder`` reading raw images."""
    from s2robot.policies.normalizer import Normalizer
    from s2robot.encoders import build_encoder
    from s2robot.envs import make_env
    from s2robot.policies import ShapeMeta, build_policy

    env = make_env(task, image_size=image_size)
    cams = [k[: -len("_image")] for k in env.observation_space.spaces if k.endswith("_image")]
    P, A = env.observation_space["proprio"].shape[0], env.action_space.shape[0]
    enc = build_encoder(encoder, scales=(1, 2), input_size=input_size, device=device)
    meta = ShapeMeta(cameras=cams, proprio_dim=P, action_dim=A, image_shape=[image_size, image_size, 3],
                     token_shape=[enc.num_tokens, enc.out_dim], num_prefix=enc.num_prefix)
    lo, hi = env.action_space.low, env.action_space.high
    norm = Normalizer().fit({"action": np.stack([lo, hi]), "proprio": np.random.default_rng(0).normal(size=(64, P))})
    env.close()
    cfg = _policy_cfg("diffusion_unet")
    if n_action_steps:
        cfg.n_action_steps = int(n_action_steps)
    torch.manual_seed(0)
    return build_policy(cfg, meta, norm, enc).to(device).eval()


def _policy_cfg(name: str):
    """``configs/policy/<name>.yaml`` as a DictConfig."""
    from importlib import resources

    from omegaconf import OmegaConf

    return OmegaConf.load(str(resources.files("s2robot.configs").joinpath("policy", f"{name}.yaml")))


def sequential(policy, task: str, image_size: int, episodes: int, max_steps: int, seed: int = 0,
               device: str = "cpu") -> dict:
    """Plain loop: one env in this process, a batch-1 forward whenever the chunk is used up."""
    from s2robot.device import autocast_for
    from s2robot.envs import make_env
    from s2robot.evaluation.rollout import episode_generator
    from s2robot.evaluation.vector_env import RenderClock

    env = make_env(task, image_size=image_size)
    clock = RenderClock(env)
    first, _ = env.reset(seed=seed)  # warm-up: the GL context and renderer are created on the first render
    _chunk_on(policy, first, 1, device)  # warm-up: encoder engines are built on first use
    t_env = t_policy = t_render = 0.0
    steps = 0
    n_obs = policy.n_obs_steps
    t0 = time.perf_counter()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        clock.take()
        hist = [obs] * n_obs
        gen = episode_generator(seed, ep)
        chunk, pos = None, 0
        for _ in range(max_steps):
            if chunk is None or pos >= len(chunk):
                tp = time.perf_counter()
                batch = {k: torch.from_numpy(np.stack([h[k] for h in hist]))[None].to(device) for k in obs}
                with torch.inference_mode(), autocast_for(torch.device(device)):
                    chunk = policy.predict_action(batch, generators=[gen])[0].float().cpu().numpy()
                pos = 0
                t_policy += time.perf_counter() - tp
            te = time.perf_counter()
            obs, _, term, trunc, info = env.step(chunk[pos])
            t_env += time.perf_counter() - te
            t_render += clock.take()
            pos += 1
            steps += 1
            hist = hist[1:] + [obs]
            if term or trunc:
                break
    wall = time.perf_counter() - t0
    env.close()
    return {"steps": steps, "wall": wall, "sps": steps / wall, "physics": (t_env - t_render) / wall,
            "render": t_render / wall, "policy": t_policy / wall}


def _chunk_on(policy, first: dict, n: int, device: str) -> None:
    """One chunk at batch ``n`` on observation ``first`` repeated over the history and the batch (a warm-up)."""
    from s2robot.device import autocast_for

    obs = {k: torch.from_numpy(np.stack([np.stack([first[k]] * policy.n_obs_steps)] * n)).to(device) for k in first}
    with torch.inference_mode(), autocast_for(torch.device(device)):
        policy.predict_action(obs)


def _warm_up(policy, task: str, image_size: int, n: int, device: str) -> None:
    """One chunk at batch ``n`` on a reset observation (OpenVINO compiles a U-Net model per batch size, ~0.1 s)."""
    from s2robot.envs import make_env

    env = make_env(task, image_size=image_size)
    first, _ = env.reset(seed=0)
    env.close()
    _chunk_on(policy, first, n, device)


def batched(policy, task: str, image_size: int, n: int, episodes: int, max_steps: int, device: str = "cpu",
            token_history: bool = True) -> dict:
    from s2robot.evaluation import evaluate

    if hasattr(policy, "obs_conditioner") or isinstance(policy, ReferencePolicy):  # steady state, as in sequential:
        _warm_up(policy, task, image_size, n, device)  # engines that compile per batch size do it here, not timed
    # whole chunks, as the sequential loop executes them, for every policy: the built-in policies' own default
    # (ACT temporal ensembling) replans every step, which the reference wrapper and the loop above do not
    s = evaluate(policy, task=task, n_envs=n, episodes=episodes, seed=0, device=device, n_videos=0,
                 env_kwargs={"image_size": image_size}, max_steps=max_steps, progress=False,
                 token_history=token_history, temporal_ensemble="off")
    wall = s["time_s"]["loop"]  # steady state: no worker start-up / shutdown
    busy = max(wall * n, 1e-9)  # worker-seconds available
    return {"steps": s["env_steps"], "wall": wall, "sps": s["env_steps_per_s"],
            "physics": s["time_s"].get("env_physics_and_task", 0.0) / busy,
            "render": s["time_s"].get("env_render", 0.0) / busy, "policy": s["time_s"]["policy"] / wall,
            "forwards": s["policy_forwards"], "batch": s["mean_forward_batch"], "startup": s["time_s"]["startup"],
            "latency_ms": 1e3 * s["time_s"]["policy"] / max(1, s["policy_forwards"]),
            "frames_encoded": s["frames_encoded"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="lift_cube")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--ns", default="1,2,4,8")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--episodes-per-env", type=int, default=4)
    ap.add_argument("--policies", default="cheap,s2")
    ap.add_argument("--input-size", type=int, default=96, help="encoder base tile size (the demo uses 96)")
    ap.add_argument("--device", default="cpu", help="policy device (cuda for the GPU check)")
    ap.add_argument("--paths", default="reference,now",
                    help="S2 policy paths: 'now' and/or 'reference' (as before the CPU inference work)")
    ap.add_argument("--n-action-steps", type=int, default=None,
                    help="S2 policy chunk length (default the config's 8; 1 = replan every step)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    ns = [int(v) for v in args.ns.split(",")]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    print(f"task={args.task} image={args.image_size}px max_steps={args.max_steps} cpus={os.cpu_count()} "
          f"threads/process=1 policy device={args.device} gpu={gpu} load {os.getloadavg()[0]:.2f}")
    by_path: dict[int, dict[str, float]] = {}
    header = f"{'policy':<8} {'mode':<12} {'env-steps/s':>11} {'vs seq':>7} {'physics':>8} {'render':>7} {'policy':>7}"
    runs = []
    for kind in args.policies.split(","):
        if kind == "cheap":
            runs.append(("cheap", "cheap"))
        else:
            runs += [(kind, path) for path in args.paths.split(",")]
    s2_policy = None
    for kind, path in runs:
        if kind == "cheap":
            from s2robot.envs import make_env

            env = make_env(args.task, image_size=args.image_size)
            policy = ConstantPolicy(env.action_space.shape[0])
            env.close()
            name = "cheap"
        else:
            if s2_policy is None:
                s2_policy = build_s2_policy(args.task, args.image_size, args.encoder, args.device, args.input_size,
                                            args.n_action_steps)
            policy = s2_policy if path == "now" else ReferencePolicy(s2_policy)
            name = f"s2 {path}"
        dev = args.device if kind != "cheap" else "cpu"
        print(f"\n{header}")
        seq = sequential(policy, args.task, args.image_size, max(2, args.episodes_per_env), args.max_steps,
                         device=dev)
        print(f"{name:<8} {'sequential':<12} {seq['sps']:>11.1f} {1.0:>7.2f} {seq['physics']:>8.1%} "
              f"{seq['render']:>7.1%} {seq['policy']:>7.1%}")
        for n in ns:
            r = batched(policy, args.task, args.image_size, n, n * args.episodes_per_env, args.max_steps,
                        device=dev, token_history=path != "reference")
            print(f"{name:<8} {f'batched N={n}':<12} {r['sps']:>11.1f} {r['sps'] / seq['sps']:>7.2f} "
                  f"{r['physics']:>8.1%} {r['render']:>7.1%} {r['policy']:>7.1%}   "
                  f"(forwards {r['forwards']}, mean batch {r['batch']:.1f}, "
                  f"{r['latency_ms']:.1f} ms/forward, startup {r['startup']:.1f}s, frames encoded "
                  f"{r['frames_encoded']})")
            if kind != "cheap":
                by_path.setdefault(n, {})[path] = r["sps"]
    for n, d in by_path.items():
        if {"now", "reference"} <= set(d):
            print(f"S2 policy N={n}: now / reference env-steps/s = {d['now'] / d['reference']:.2f}x")
    print("\nphysics/render: share of worker time (batched) or of wall (sequential); policy: share of wall.")


if __name__ == "__main__":
    main()
