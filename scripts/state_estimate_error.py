"""How well does an ``estimate_state`` image policy know the object poses? Its estimate against the store's state.

    python scripts/state_estimate_error.py RUN [--dataset STORE] [--split val] [--windows 4096]

RUN: a run directory or checkpoint trained with ``policy.obs.estimate_state=true``. On the run's own held-out
episodes (the store, ``dataset.val_ratio`` and ``dataset.seed`` from the checkpoint's config) it feeds each window's
observations (cached tokens when the run trained on them, else images; proprio) to
``policy.estimate_state`` and compares the last step's estimate with the true ``state``: per object (the state's
[x, y, z, cos yaw, sin yaw] blocks) the RMS x / y error in millimetres and the median / RMS yaw error in degrees,
then the RMS error of any remaining (goal) entries. The same numbers as ``scripts/probe_tokens.py --yaw``, but for
the estimate the policy conditions on (absolute positions here; the probe's are relative to the hand).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from s2robot.envs.tasks import STATE_PER_OBJECT
from s2robot.policies.loading import read_config, load_policy


def state_errors(est: np.ndarray, true: np.ndarray) -> list[str]:
    """Report lines for estimates and true states, both (n, S) in the store's units."""
    lines = []
    n_obj = true.shape[1] // STATE_PER_OBJECT
    for k in range(n_obj):
        block = slice(STATE_PER_OBJECT * k, STATE_PER_OBJECT * (k + 1))  # [x, y, z, cos yaw, sin yaw]
        e, t = est[:, block], true[:, block]
        rms_mm = np.sqrt(((e[:, :2] - t[:, :2]) ** 2).mean(axis=0)) * 1000
        dyaw = np.angle(np.exp(1j * (np.arctan2(e[:, 4], e[:, 3]) - np.arctan2(t[:, 4], t[:, 3]))), deg=True)
        lines.append(f"object {k}: x / y RMS {rms_mm[0]:.1f} / {rms_mm[1]:.1f} mm; yaw median "
                     f"{np.median(np.abs(dyaw)):.2f} deg, RMS {np.sqrt((dyaw ** 2).mean()):.2f} deg")
    rest = slice(STATE_PER_OBJECT * n_obj, true.shape[1])
    if true[:, rest].size:
        lines.append(f"goal entries: RMS {np.sqrt(((est[:, rest] - true[:, rest]) ** 2).mean()):.4f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--dataset", default=None, help="the store (default: the one the run trained on)")
    ap.add_argument("--split", default="val", choices=("val", "train", "all"))
    ap.add_argument("--windows", type=int, default=4096, help="at most this many windows, evenly spaced")
    args = ap.parse_args(argv)
    from s2robot.datasets.sampler import SequenceDataset

    cfg = read_config(args.run)
    policy = load_policy(args.run)
    meta = policy.shape_meta
    if not meta.estimated_state_dim:
        print(f"error: {args.run} does not estimate the state (trained with policy.obs.estimate_state=false)",
              file=sys.stderr)
        return 2
    feature_hash = meta.feature_hash if cfg.dataset.get("use_cached_features", True) else None
    keys = [f"{c}_image" for c in meta.cameras] + (["proprio"] if meta.proprio_dim else []) + ["state"]
    ds = SequenceDataset(args.dataset or cfg.dataset.path, horizon=policy.horizon, n_obs_steps=policy.n_obs_steps,
                         n_action_steps=policy.n_action_steps, obs_keys=keys, feature_hash=feature_hash,
                         split=args.split, val_ratio=float(cfg.dataset.val_ratio), seed=int(cfg.dataset.seed))
    idx = np.unique(np.linspace(0, len(ds) - 1, min(args.windows, len(ds))).astype(int))
    est, true = [], []
    for chunk in np.array_split(idx, max(1, len(idx) // 256)):
        batch = ds.get_batch(chunk.tolist())
        obs = {k: v for k, v in batch.items() if k not in ("state", "action")}
        est.append(policy.estimate_state(obs)[:, -1].numpy())
        true.append(batch["state"][:, policy.n_obs_steps - 1].float().numpy())
    print(f"{args.run}: {len(idx)} {args.split} windows of {ds.path}")
    for line in state_errors(np.concatenate(est), np.concatenate(true)):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
