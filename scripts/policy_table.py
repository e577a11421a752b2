"""Seed-pooled results of the study's ``policies_<task>`` stage: ``python scripts/policy_table.py outputs/study``.

Runs named ``<task>-<obs>-<policy>-seed<k>`` are grouped over k and over how the evaluation executed the chunks
(``[ACT temporal ensembling m=0]`` / ``[whole chunks]`` / ``[whole chunks, first 4 actions of each chunk]``:
``s2robot.evaluation.report.execution_label`` of ``summary.json``'s ``execution``, the wording of the eval plot's
title; one group per ``eval*/`` folder kind): success pooled over every evaluation episode of
every seed with a 95 % Wilson interval, the per-seed counts, mean max score, final held-out loss and the
training wall time (from train.csv's steps/s). A second table gives each run's learning curve (success of the
periodic rollouts and held-out loss at each evaluated step).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from s2robot.evaluation.metrics import wilson_interval
from s2robot.evaluation.report import execution_label


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def group_name(run: str, how: str) -> str:
    """``<task>-<obs>-<policy> [<execution_label>]``: the table's name of a run's seeds evaluated one way."""
    return f"{run} [{how}]"


def runs_by_execution(groups: dict[str, list[dict]], run: str) -> dict[str, list[dict]]:
    """``{execution label: seeds}`` of one run name (``task-obs-policy``) in :func:`collect`'s groups."""
    prefix = group_name(run, "")[:-1]
    return {name[len(prefix):-1]: runs for name, runs in groups.items() if name.startswith(prefix)}


def collect(root: Path) -> dict[str, list[dict]]:
    """Runs under ``root/runs/<name>-seed<k>/eval*/summary.json`` grouped as ``{group_name(name, how): [seed]}``,
    ``how`` = ``execution_label`` of the summary's ``execution``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for summary in sorted(root.glob("runs/*-seed*/eval*/summary.json")):
        run = summary.parent.parent
        m = re.match(r"(.+)-seed(\d+)$", run.name)
        if not m:
            continue
        s = json.loads(summary.read_text())
        how = execution_label(s.get("execution"))
        train = _csv(run / "train.csv")
        secs = sum(int(float(r.get("step", 0)) - float(p.get("step", 0))) / max(float(r["steps_per_s"]), 1e-9)
                   for p, r in zip([{"step": 0}] + train[:-1], train)) if train else float("nan")
        val = _csv(run / "val.csv")
        groups[group_name(m.group(1), how)].append({
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
        lo, hi = wilson_interval(k, n)
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
