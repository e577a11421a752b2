"""Seed-pooled results of the study's ``policies_<task>`` stage: ``python scripts/policy_table.py outputs/study``.

Runs named ``<task>-<obs>-<policy>-seed<k>`` are grouped over k and over how the evaluation executed the chunks
(``[ACT m=0]`` / ``[whole chunks]``, from ``summary.json``'s ``execution``; one group per ``eval*/`` folder kind): success pooled over every evaluation episode of
every seed with a 95 % Wilson interval, the per-seed counts, mean max score, final held-out loss and the
training wall time (from train.csv's steps/s). A second table gives each run's learning curve (success of the
periodic rollouts and held-out loss at each evaluated step).
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def collect(root: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for summary in sorted(root.glob("runs/*-seed*/eval*/summary.json")):
        run = summary.parent.parent
        m = re.match(r"(.+)-seed(\d+)$", run.name)
        if not m:
            continue
        s = json.loads(summary.read_text())
        execution = s.get("execution") or {}
        te = execution.get("temporal_ensemble")
        how = "whole chunks" if te is None else f"ACT m={te:g}"  # summaries written before execution existed: chunks
        train = _csv(run / "train.csv")
        secs = sum(int(float(r.get("step", 0)) - float(p.get("step", 0))) / max(float(r["steps_per_s"]), 1e-9)
                   for p, r in zip([{"step": 0}] + train[:-1], train)) if train else float("nan")
        val = _csv(run / "val.csv")
        groups[f"{m.group(1)} [{how}]"].append({
            "seed": int(m.group(2)), "k": int(s["n_success"]), "n": int(s["n_episodes"]),
            "score": float(s.get("mean_max_score") or float("nan")), "val": float(val[-1]["val_loss"]) if val else None,
            "secs": secs, "curve": _csv(run / "eval.csv"), "val_curve": val,
        })
    return groups


def main() -> None:
    roots = [Path(r) for r in (sys.argv[1:] or ["outputs/study"])]
    groups: dict[str, list[dict]] = {}
    for root in roots:
        groups.update(collect(root))
    print("| run (task-obs-policy) | seeds | success (pooled) | 95% Wilson CI | per seed | mean max score "
          "| val loss | train time / seed |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for name, runs in sorted(groups.items()):
        k, n = sum(r["k"] for r in runs), sum(r["n"] for r in runs)
        lo, hi = wilson(k, n)
        per = ", ".join(f"{r['k']}/{r['n']}" for r in sorted(runs, key=lambda r: r["seed"]))
        vals = [r["val"] for r in runs if r["val"] is not None]
        val = f"{sum(vals) / len(vals):.4f}" if vals else ""
        score = sum(r["score"] for r in runs) / len(runs)
        secs = sum(r["secs"] for r in runs) / len(runs)
        print(f"| {name} | {len(runs)} | **{k}/{n} = {100 * k / n:.0f}%** | {100 * lo:.0f}-{100 * hi:.0f}% | {per} "
              f"| {score:.2f} | {val} | {secs / 60:.1f} min |")
    print()
    print("| run | learning curve: step: rollout success (held-out loss) |")
    print("|---|---|")
    for name, runs in sorted(groups.items()):
        for r in sorted(runs, key=lambda r: r["seed"]):
            vals = {int(v["step"]): float(v["val_loss"]) for v in r["val_curve"]}
            pts = [f"{int(e['step'])}: {float(e['success_rate']):.2f}"
                   + (f" ({vals[int(e['step'])]:.4f})" if int(e["step"]) in vals else "") for e in r["curve"]]
            print(f"| {name}-seed{r['seed']} | {'; '.join(pts)} |")


if __name__ == "__main__":
    main()
