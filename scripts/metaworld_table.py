"""The README's Meta-World table from the outputs of ``scripts/study.sh metaworld``.

    python scripts/metaworld_table.py [outputs/study/metaworld]

Reads ``baselines.jsonl`` (expert, random), ``runs/<task>-<demos>/eval/summary.json`` (the policy) and
``times.tsv`` (wall time of each stage); prints two markdown tables. Tasks without results are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEMOS = (25, 50)


def _rate(ok: int, n: int, ci) -> str:
    return f"{ok}/{n} ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})"


def _times(folder: Path) -> dict[tuple[str, str], float]:
    times: dict[tuple[str, str], float] = {}
    path = folder / "times.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        task, stage, seconds = line.split("\t")
        times[(task, stage)] = float(seconds)  # a rerun (resume) replaces the figure
    return times


def tables(folder: Path) -> str:
    base = {}
    path = folder / "baselines.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        base[row["task"].split("/", 1)[1]] = row
    times = _times(folder)
    results = ["| task | expert, seeds 0-49 | random | BC-MLP, 25 demos | BC-MLP, 50 demos |", "|---|---:|---:|---:|---:|"]
    timing = ["| task | baselines | collect 25 / +25 | cache 25 / 50 | train 25 / 50 | eval 25 / 50 |",
              "|---|---:|---:|---:|---:|---:|"]
    rates = {n: [] for n in DEMOS}
    for task, row in base.items():
        cells = [_rate(row["expert"]["success"], 50, row["expert"]["ci95"]),
                 _rate(row["random"]["success"], row["random"]["episodes"], row["random"]["ci95"])]
        for n in DEMOS:
            summary = folder / "runs" / f"{task}-{n}" / "eval" / "summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text())
                cells.append(_rate(s["n_success"], s["n_episodes"], s["success_ci95"]))
                rates[n].append(s["success_rate"])
            else:
                cells.append("not run")
        results.append(f"| {task} | " + " | ".join(cells) + " |")

        def t(stage: str) -> str:
            return f"{times[(task, stage)]:.0f}" if (task, stage) in times else "-"

        timing.append(f"| {task} | {t('baselines')} | {t('collect25')} / {t('collect50')} | {t('cache25')} / "
                      f"{t('cache50')} | {t('train25')} / {t('train50')} | {t('eval25')} / {t('eval50')} |")
    means = ", ".join(f"{n} demos {100 * sum(r) / len(r):.1f} % over {len(r)} tasks" for n, r in rates.items() if r)
    return "\n".join(results) + f"\n\nMean policy success: {means or 'none yet'}.\n\nWall time (s):\n\n" + "\n".join(timing)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/study/metaworld")))
