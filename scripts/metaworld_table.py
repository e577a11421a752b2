"""The README's Meta-World table from the outputs of ``scripts/study.sh metaworld``.

    python scripts/metaworld_table.py [outputs/study/metaworld]

Reads ``baselines.jsonl`` (expert, random), ``runs/<task>-<demos>/eval/summary.json`` (the policy) and
``times.tsv`` (wall time of each stage); prints two markdown tables. Tasks without results are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

POLICIES = {"": "BC-MLP", "-diffusion_unet": "diffusion U-Net"}  # study.sh's run-folder suffix (MW_POLICY) -> name
COLUMNS = [(f"{name}, {n} demos", f"{n}{sfx}") for sfx, name in POLICIES.items() for n in (25, 50)]  # (header, suffix)


def _rate(ok: int, n: int, ci) -> str:
    return f"{ok}/{n} ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})"


def _times(folder: Path) -> dict[tuple[str, str], float]:
    times: dict[tuple[str, str], float] = {}
    path = folder / "times.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        task, stage, seconds = line.split("\t")
        # study.sh appends a line only when a stage completes, so the first line is the stage's cost; a later one is a
        # rerun (resume, or MW_POLICY's rows) that found the stage's output done
        times.setdefault((task, stage), float(seconds))
    return times


def tables(folder: Path) -> str:
    base = {}
    path = folder / "baselines.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        base[row["task"].split("/", 1)[1]] = row
    times = _times(folder)

    summaries = {}
    for task in base:
        for _, sfx in COLUMNS:
            f = folder / "runs" / f"{task}-{sfx}" / "eval" / "summary.json"
            summaries[(task, sfx)] = json.loads(f.read_text()) if f.is_file() else None
    columns = [(h, sfx) for h, sfx in COLUMNS if any(summaries[(t, sfx)] for t in base)]
    results = ["| task | expert, seeds 0-49 | random | " + " | ".join(h for h, _ in columns) + " |",
               "|---|---:|---:|" + "---:|" * len(columns)]
    timing = ["| task | baselines | collect 25 / +25 | cache 25 / 50 | " + " | ".join(
        f"train / eval: {h}" for h, _ in columns) + " |", "|---|---:|---:|---:|" + "---:|" * len(columns)]
    rates: dict[str, list[float]] = {h: [] for h, _ in columns}
    for task, row in base.items():
        cells = [_rate(row["expert"]["success"], 50, row["expert"]["ci95"]),
                 _rate(row["random"]["success"], row["random"]["episodes"], row["random"]["ci95"])]
        for h, sfx in columns:
            s = summaries[(task, sfx)]
            cells.append(_rate(s["n_success"], s["n_episodes"], s["success_ci95"]) if s else "not run")
            if s:
                rates[h].append(s["success_rate"])
        results.append(f"| {task} | " + " | ".join(cells) + " |")

        def t(stage: str) -> str:
            return f"{times[(task, stage)]:.0f}" if (task, stage) in times else "-"

        timing.append(f"| {task} | {t('baselines')} | {t('collect25')} / {t('collect50')} | {t('cache25')} / "
                      f"{t('cache50')} | " + " | ".join(
                          f"{t('train' + sfx)} / {t('eval' + sfx)}"
                          for _, sfx in columns) + " |")
    means = ", ".join(f"{h} {100 * sum(r) / len(r):.1f} % over {len(r)} tasks" for h, r in rates.items() if r)
    return "\n".join(results) + f"\n\nMean policy success: {means or 'none yet'}.\n\nWall time (s):\n\n" + "\n".join(timing)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/study/metaworld")))
