"""Perception-only S2 probe: can a frozen encoder's tokens tell which object carries the task's fine detail?

    python scripts/probe_detail.py --encoder mobilenet_v2 --scales 1 2 [--task push_marked] [--scenes 2000]

Renders ``--scenes`` + ``--val`` initial front views of a fine-detail task (``push_marked``, ``match_marker``) from
seeded resets (seeds 200000+, apart from training and evaluation seeds), encodes them with the frozen encoder, and
trains an attention-pool probe (the policies' ``TokenPooler`` + an MLP) to classify which object is the goal by its
left-to-right rank in the image. Prints the held-out accuracy beside chance. The objects differ only by their
marker, so this measures whether the tokens carry the detail, apart from control, policy or demonstrations.
Rendered frames are kept in ``--frames`` (an .npz) so every encoder sees the same images.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from s2robot.envs.tasks import STATE_PER_OBJECT


def goal_rank(state: np.ndarray) -> np.ndarray:
    """(T, 5K + K) privileged states with a goal one-hot over the K objects at the end -> (T,) int64: the goal
    object's rank by x (0 = leftmost in the front image)."""
    d = state.shape[1]
    k = d // (STATE_PER_OBJECT + 1)
    if d != (STATE_PER_OBJECT + 1) * k or k < 2:
        raise SystemExit(f"the detail probe needs a state of {STATE_PER_OBJECT} numbers per object + a goal "
                         f"one-hot over the objects, got {d} numbers (tasks: push_marked, match_marker)")
    xs = state[:, 0:STATE_PER_OBJECT * k:STATE_PER_OBJECT]  # (T, K)
    goal = state[:, STATE_PER_OBJECT * k:].argmax(1)
    return (xs < xs[np.arange(len(xs)), goal][:, None]).sum(1).astype(np.int64)


def render_scenes(task: str, n: int, image_size: int, seed0: int) -> tuple[np.ndarray, np.ndarray]:
    """-> frames (n, H, W, 3) uint8 of the front camera after ``reset(seed=seed0 + i)``, labels (n,) int64."""
    from s2robot.envs import make_env

    env = make_env(task, image_size=image_size, cameras=("front",), state_obs=True)
    frames, states = [], []
    for i in range(n):
        obs, _ = env.reset(seed=seed0 + i)
        frames.append(obs["front_image"])
        states.append(obs["state"])
    env.close()
    return np.stack(frames), goal_rank(np.stack(states))


def encode(frames: np.ndarray, args) -> "torch.Tensor":
    import torch

    from s2robot.encoders.registry import build_encoder

    enc = build_encoder(args.encoder, checkpoint=args.checkpoint, scales=args.scales, input_size=args.input_size)
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), 64):
            x = torch.from_numpy(frames[i:i + 64]).permute(0, 3, 1, 2).float() / 255.0
            out.append(enc.encode(x).float())
    return torch.cat(out)


def train_classifier(tokens: list, labels, train_idx, val_idx, steps: int, d_model: int = 64,
                     seed: int | None = None) -> float:
    """Attention-pool probe (one ``TokenPooler`` per camera + an MLP) classifying ``labels`` (T,) int64 from one
    frame's tokens (a list of (T, N, D) tensors, one per camera), trained on rows ``train_idx`` with AdamW, batch 64;
    returns the accuracy on rows ``val_idx``. ``seed``: reseed torch first (None: use the current RNG)."""
    import torch
    from torch import nn

    from s2robot.policies.conditioning import ConditioningConfig, TokenPooler

    if seed is not None:
        torch.manual_seed(seed)
    k = int(labels.max()) + 1
    cfg = ConditioningConfig(d_model=d_model)
    poolers = nn.ModuleList(TokenPooler(cfg, t.shape[1], t.shape[2]) for t in tokens)
    head = nn.Sequential(nn.Linear(len(tokens) * cfg.num_queries * cfg.d_model, 256), nn.GELU(), nn.Linear(256, k))
    opt = torch.optim.AdamW(list(poolers.parameters()) + list(head.parameters()), lr=3e-4, weight_decay=1e-4)

    def logits(idx):
        return head(torch.cat([p(t[idx]).flatten(1) for p, t in zip(poolers, tokens)], dim=1))

    for _ in range(steps):
        idx = train_idx[torch.randint(len(train_idx), (64,))]
        loss = nn.functional.cross_entropy(logits(idx), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (logits(val_idx).argmax(1) == labels[val_idx]).float().mean().item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="push_marked")
    ap.add_argument("--encoder", default="mobilenet_v2")
    ap.add_argument("--checkpoint", default=None, help="encoder weights (default: the encoder's; 'random')")
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 2])
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--scenes", type=int, default=2000, help="training scenes")
    ap.add_argument("--val", type=int, default=500, help="held-out scenes")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3, help="probe training seeds (accuracy: mean and each)")
    ap.add_argument("--frames", default=None, help=".npz to keep/reuse the rendered frames")
    args = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    n = args.scenes + args.val
    path = Path(args.frames) if args.frames else None
    if path is not None and path.exists():
        data = np.load(path)
        frames, labels = data["frames"], data["labels"]
        if len(frames) < n:
            raise SystemExit(f"{path} holds {len(frames)} frames, fewer than --scenes + --val = {n}")
        frames, labels = frames[:n], labels[:n]
    else:
        frames, labels = render_scenes(args.task, n, args.image_size, seed0=200000)
        if path is not None:
            np.savez(path, frames=frames, labels=labels)
    t0 = time.perf_counter()
    tokens = encode(frames, args)
    t_enc = time.perf_counter() - t0
    import torch

    y = torch.from_numpy(labels)
    train, val = torch.arange(args.scenes), torch.arange(args.scenes, n)
    accs = [train_classifier([tokens], y, train, val, args.steps, seed=s) for s in range(args.seeds)]
    k = int(labels.max()) + 1
    print(f"detail probe {args.task} {args.encoder} scales {args.scales} input {args.input_size} "
          f"(image {args.image_size} px) tokens {tuple(tokens.shape[1:])}: held-out accuracy {np.mean(accs):.3f} "
          f"(seeds {', '.join(f'{a:.3f}' for a in accs)}; chance {1 / k:.3f}; {args.scenes} train / {args.val} "
          f"val scenes; encode {1000 * t_enc / n:.1f} ms/frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
