"""How well do cached frozen tokens locate the object? A perception-only probe for diagnosing vision policies.

    python scripts/probe_tokens.py STORE [--feature-key HASH] [--cameras front wrist] [--steps 8000] [--object K]
                                         [--within M] [--yaw] [--pooling keypoints]

Trains the policies' own token pooler (``TokenPooler``, attention pooling) + a small MLP on the cached tokens of
one frame to predict object ``K``'s position relative to the end effector (``state[5K:5K+3] - proprio[:3]``: the
task state holds [x, y, z, cos yaw, sin yaw] per object; K = 0 by default, cube B of stack_cubes is 1; metres;
the store needs the privileged ``state``: collect with ``task.env_kwargs.state_obs=true``), on the training
episodes, and prints the held-out RMSE per axis in millimetres. A scripted grasp needs ~5 mm; a probe that cannot
get near that says the tokens (not the policy head, control or data) limit an image policy. ``--yaw`` adds the
object's (cos yaw, sin yaw) to the target and prints the held-out angle error (push_t's T: 0.95 coverage needs
~2-3 mm and ~2 deg). ``--pooling``: the pooler's mode (``policy.obs.pooling``; ``keypoints``: spatial-softmax
keypoints, for fine token grids).

``--detail``: instead, classify which object is the goal (the one-hot at the end of ``state``, as in
``push_marked`` and ``match_marker``) by its left-to-right rank in the image (rank of its x among the objects'),
and print the held-out accuracy beside chance (1/K). Only the task's small marker tells the objects apart, so this
measures whether the tokens carry the fine detail, apart from any policy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from probe_detail import goal_rank, train_classifier  # noqa: E402  (the detail probe, one copy)

from s2robot.envs.tasks import STATE_PER_OBJECT  # noqa: E402
from s2robot.policies.conditioning import POOLINGS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--feature-key", default=None, help="features/<key> (default: the only / first feature set)")
    ap.add_argument("--cameras", nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=8000,
                    help="training steps at batch 64 (1500, about one pass over 100k frames, underfits: push_t's T "
                         "9.0 / 8.0 mm at 1500 vs 5.8 / 5.3 mm at 8000 on the same tokens)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--object", type=int, default=0, help="which object's position to predict (0: the first)")
    ap.add_argument("--within", type=float, default=None,
                    help="only frames where the object is within this xy distance (m) of the end effector")
    ap.add_argument("--yaw", action="store_true",
                    help="also predict the object's yaw (cos, sin) and print the held-out angle error (push_t's T)")
    ap.add_argument("--pooling", default="attention", choices=POOLINGS,
                    help="the token pooler's mode (policy.obs.pooling)")
    ap.add_argument("--detail", action="store_true", help="classify the goal object's x-rank instead (see above)")
    ap.add_argument("--folds", type=int, default=1,
                    help="--detail: k-fold cross-validation over episodes (every episode held out once)")
    ap.add_argument("--first-frames", type=int, default=None,
                    help="only the first N frames of each episode (before the gripper gives the goal away)")
    args = ap.parse_args(argv)

    from s2robot.datasets.sampler import split_episodes
    from s2robot.datasets.store import EpisodeStore
    from s2robot.policies.conditioning import ConditioningConfig, TokenPooler

    torch.manual_seed(args.seed)
    store = EpisodeStore.open(args.store, mode="r")
    if "state" not in store.spec:
        raise SystemExit(f"{args.store}: no 'state' key; collect with task.env_kwargs.state_obs=true")
    feats = store.group["features"]
    key = args.feature_key or sorted(feats.group_keys())[0]
    cams = args.cameras or list(store.cameras)
    n = store.n_steps
    tokens = {c: torch.from_numpy(np.asarray(feats[key][c][:n]).astype(np.float32)) for c in cams}
    state = np.asarray(store.array("state")[:n], dtype=np.float64)
    if args.detail:
        target = torch.from_numpy(goal_rank(state))
    else:
        lo = STATE_PER_OBJECT * args.object
        if not 0 <= lo <= state.shape[1] - STATE_PER_OBJECT:
            raise SystemExit(f"--object {args.object}: the state ({state.shape[1]} values) holds "
                             f"{state.shape[1] // STATE_PER_OBJECT} objects of {STATE_PER_OBJECT} values")
        pos = state[:, lo:lo + 3]
        rel = pos - np.asarray(store.array("proprio")[:n, :3])
        if args.yaw:  # + [cos yaw, sin yaw] of the object (STATE_PER_OBJECT = x, y, z, cos, sin)
            rel = np.concatenate([rel, state[:, lo + 3:lo + 5]], axis=1)
        target = torch.from_numpy(rel.astype(np.float32))
    train_eps, val_eps = split_episodes(store.n_episodes, 0.2, args.seed)
    ends = store.episode_ends
    starts = ends - store.episode_lengths
    last = (lambda e: ends[e]) if args.first_frames is None else (lambda e: min(ends[e], starts[e] + args.first_frames))
    rows = lambda eps: torch.from_numpy(np.concatenate([np.arange(starts[e], last(e)) for e in eps]))  # noqa: E731
    tr, va = rows(train_eps), rows(val_eps)
    if args.within is not None and not args.detail:
        near = target[:, :2].norm(dim=1) < args.within  # (n,) bool over all frames
        tr, va = tr[near[tr]], va[near[va]]
        if len(tr) == 0 or len(va) == 0:
            raise SystemExit(f"--within {args.within}: no training or held-out frame has the object that close")
    if args.detail:
        if args.folds <= 1:
            probe_detail(args, args.store, key, cams, tokens, target, tr, va)
            return 0
        order = np.random.default_rng(args.seed).permutation(store.n_episodes)
        correct = total = 0
        for fold in np.array_split(order, args.folds):
            held = set(fold.tolist())
            c, t = probe_detail(args, args.store, key, cams, tokens, target,
                                rows([e for e in order if e not in held]), rows(sorted(held)))
            correct, total = correct + c, total + t
        print(f"detail probe {args.store} features/{key}: {args.folds}-fold held-out accuracy {correct / total:.3f} "
              f"({correct}/{total} frames, first {args.first_frames or 'all'} frames of {store.n_episodes} episodes)")
        return 0
    mu, sd = target[tr].mean(0), target[tr].std(0)

    cfg = ConditioningConfig(d_model=args.d_model, pooling=args.pooling)
    N, D = tokens[cams[0]].shape[1:]
    num_prefix = int(feats[key].attrs.get("num_prefix", 0))
    poolers = nn.ModuleList(TokenPooler(cfg, N, D, num_prefix) for _ in cams)
    head = nn.Sequential(nn.Linear(len(cams) * cfg.num_queries * cfg.d_model, 256), nn.GELU(),
                         nn.Linear(256, target.shape[1]))
    params = list(poolers.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)

    def predict(idx):
        z = torch.cat([p(tokens[c][idx]).flatten(1) for p, c in zip(poolers, cams)], dim=1)
        return head(z)

    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = tr[torch.randint(len(tr), (64,))]
        loss = ((predict(idx) - (target[idx] - mu) / sd) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = predict(va) * sd + mu
        err = pred - target[va]
        base = target[va] - mu  # predicting the training mean
    rmse = (err[:, :3] ** 2).mean(0).sqrt() * 1000
    yaw = ""
    if args.yaw:
        dyaw = torch.atan2(pred[:, 4], pred[:, 3]) - torch.atan2(target[va][:, 4], target[va][:, 3])
        dyaw = torch.rad2deg(torch.atan2(torch.sin(dyaw), torch.cos(dyaw))).abs()
        yaw = f"; yaw error median {dyaw.median():.1f} deg, RMS {dyaw.pow(2).mean().sqrt():.1f} deg"
    where = "" if args.within is None else f" (object within {args.within * 1000:.0f} mm xy)"
    base_rmse = (base[:, :3] ** 2).mean(0).sqrt() * 1000
    print(f"probe {args.store} features/{key} cameras {cams} tokens {N}x{D} {args.pooling} object {args.object}: "
          f"held-out RMSE x/y/z "
          f"{rmse[0]:.1f}/{rmse[1]:.1f}/{rmse[2]:.1f} mm (mean predictor {base_rmse[0]:.1f}/{base_rmse[1]:.1f}/"
          f"{base_rmse[2]:.1f} mm){yaw}, {len(tr)} train / {len(va)} val frames{where}, {time.perf_counter() - t0:.0f} s")
    return 0


def probe_detail(args, name, key, cams, tokens, label, tr, va) -> tuple[int, int]:
    """The detail probe (``probe_detail.train_classifier``) trained on rows ``tr``; prints the held-out accuracy on
    rows ``va`` and returns (correct, total)."""
    t0 = time.perf_counter()
    acc = train_classifier([tokens[c] for c in cams], label, tr, va, args.steps, args.d_model)
    N, D = tokens[cams[0]].shape[1:]
    print(f"detail probe {name} features/{key} cameras {cams} tokens {N}x{D}: held-out accuracy {acc:.3f} "
          f"(chance {1 / (int(label.max()) + 1):.3f}), {len(tr)} train / {len(va)} val frames, "
          f"{time.perf_counter() - t0:.0f} s")
    return round(acc * len(va)), len(va)


if __name__ == "__main__":
    raise SystemExit(main())
