"""Markdown table of the study's evaluation summaries: python scripts/study_table.py outputs/study [more dirs]."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def rows(root: Path):
    for summary in sorted(root.glob("runs/*/eval/summary.json")):
        run = summary.parent.parent
        s = json.loads(summary.read_text())
        steps = ""
        with open(run / "train.csv") as f:
            last = list(csv.DictReader(f))[-1]
            steps = last.get("step", "")
        val = ""
        if (run / "val.csv").is_file():
            with open(run / "val.csv") as f:
                vals = list(csv.DictReader(f))
            val = f"{float(vals[-1]['val_loss']):.4f}" if vals else ""
        lo, hi = s["success_ci95"]
        n = s.get("n_episodes", s.get("episodes_total", len(json.loads((summary.parent / "episodes.json").read_text()))))
        yield (run.name, steps, f"{s['n_success']}/{n}", f"{100 * s['success_rate']:.0f}%",
               f"{100 * lo:.0f}-{100 * hi:.0f}%", f"{s['mean_max_score']:.2f}", val)


def main() -> None:
    print("| run (task-policy or task-encoder) | train steps | success | rate | 95% Wilson CI | mean max score "
          "| val loss (held-out episodes) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for root in sys.argv[1:] or ["outputs/study"]:
        for r in rows(Path(root)):
            print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
