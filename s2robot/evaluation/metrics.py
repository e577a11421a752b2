"""Evaluation metrics: success rate with a Wilson score interval, score and length statistics."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (default 95%). Returns (low, high); (0, 1) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n, which is where
    small robot evaluations usually are.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no 1e-17 round-off)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def summarize_episodes(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-episode records (keys ``success``, ``max_score``, ``length``, ``error``) into summary metrics.

    Episodes that ended with an error count as failures in the success rate and are also counted in ``n_errors``.
    ``mean_max_score`` averages over episodes whose env reports ``info["score"]`` (None if none does).
    """
    n = len(episodes)
    n_success = sum(1 for e in episodes if e["success"])
    lo, hi = wilson_interval(n_success, n)
    scores = [e["max_score"] for e in episodes if e.get("max_score") is not None]
    lengths = np.array([e["length"] for e in episodes], dtype=np.float64)
    return {
        "n_episodes": n,
        "n_success": n_success,
        "n_errors": sum(1 for e in episodes if e.get("error")),
        "success_rate": n_success / n if n else 0.0,
        "success_ci95": [lo, hi],
        "mean_max_score": float(np.mean(scores)) if scores else None,
        "mean_length": float(lengths.mean()) if n else 0.0,
        "median_length": float(np.median(lengths)) if n else 0.0,
        "min_length": int(lengths.min()) if n else 0,
        "max_length": int(lengths.max()) if n else 0,
    }
