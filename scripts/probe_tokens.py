"""How well do cached frozen tokens locate the object? A perception-only probe for diagnosing vision policies.

    python scripts/probe_tokens.py STORE [--feature-key HASH] [--cameras front wrist] [--steps 1500]

Trains the policies' own token pooler (``TokenPooler``, attention pooling) + a small MLP on the cached tokens of
one frame to predict the object's position relative to the end effector (``state[:3] - proprio[:3]``, metres;
the store needs the privileged ``state``: collect with ``task.env_kwargs.state_obs=true``), on the training
episodes, and prints the held-out RMSE per axis in millimetres. A scripted grasp needs ~5 mm; a probe that cannot
get near that says the tokens (not the policy head, control or data) limit an image policy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--feature-key", default=None, help="features/<key> (default: the only / first feature set)")
    ap.add_argument("--cameras", nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
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
    target = torch.from_numpy(np.asarray(store.array("state")[:n, :3] - store.array("proprio")[:n, :3],
                                         dtype=np.float32))
    train_eps, val_eps = split_episodes(store.n_episodes, 0.2, args.seed)
    ends = store.episode_ends
    starts = ends - store.episode_lengths
    rows = lambda eps: torch.from_numpy(np.concatenate([np.arange(starts[e], ends[e]) for e in eps]))  # noqa: E731
    tr, va = rows(train_eps), rows(val_eps)
    mu, sd = target[tr].mean(0), target[tr].std(0)

    cfg = ConditioningConfig(d_model=args.d_model)
    N, D = tokens[cams[0]].shape[1:]
    poolers = nn.ModuleList(TokenPooler(cfg, N, D) for _ in cams)
    head = nn.Sequential(nn.Linear(len(cams) * cfg.num_queries * cfg.d_model, 256), nn.GELU(), nn.Linear(256, 3))
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
        err = predict(va) * sd + mu - target[va]
        base = target[va] - mu  # predicting the training mean
    rmse = (err ** 2).mean(0).sqrt() * 1000
    base_rmse = (base ** 2).mean(0).sqrt() * 1000
    print(f"probe {args.store} features/{key} cameras {cams} tokens {N}x{D}: held-out RMSE x/y/z "
          f"{rmse[0]:.1f}/{rmse[1]:.1f}/{rmse[2]:.1f} mm (mean predictor {base_rmse[0]:.1f}/{base_rmse[1]:.1f}/"
          f"{base_rmse[2]:.1f} mm), {len(tr)} train / {len(va)} val frames, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
