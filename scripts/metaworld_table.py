"""The README's Meta-World table from the outputs of ``scripts/study.sh metaworld``.

    python scripts/metaworld_table.py [outputs/study/metaworld]

Reads ``baselines.jsonl`` (expert, random), ``runs/<task>-<demos>/eval/summary.json`` (the policy) and
``times.tsv`` (wall time of each stage); prints two markdown tables. Tasks without results are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (  # (header, run-folder suffix of runs/<task>-<suffix>): study.sh's BC-MLP rows, then MW_POLICY=diffusion_unet
    ("BC-MLP, 25 demos", "25"),
    ("BC-MLP, 50 demos", "50"),
    ("diffusion U-Net, 50 demos", "50-diffusion_unet"),
)


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

    def summary(task: str, suffix: str) -> dict | None:
        f = folder / "runs" / f"{task}-{suffix}" / "eval" / "summary.json"
        return json.loads(f.read_text()) if f.is_file() else None

    columns = [(h, sfx) for h, sfx in COLUMNS if any(summary(t, sfx) for t in base)]
    results = ["| task | expert, seeds 0-49 | random | " + " | ".join(h for h, _ in columns) + " |",
               "|---|---:|---:|" + "---:|" * len(columns)]
    timing = ["| task | baselines | collect 25 / +25 | cache 25 / 50 | " + " | ".join(
        f"train / eval: {h}" for h, _ in columns) + " |", "|---|---:|---:|---:|" + "---:|" * len(columns)]
    rates: dict[str, list[float]] = {h: [] for h, _ in columns}
    for task, row in base.items():
        cells = [_rate(row["expert"]["success"], 50, row["expert"]["ci95"]),
                 _rate(row["random"]["success"], row["random"]["episodes"], row["random"]["ci95"])]
        for h, sfx in columns:
            s = summary(task, sfx)
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
