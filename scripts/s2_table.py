"""The S2 study's table (issue 15) from ``scripts/study.sh s2_detail``:  python scripts/s2_table.py OUT

One row per encoder configuration of ``OUT/runs/push_marked-<row>-seed<k>``: success pooled over seeds and
evaluation episodes with a 95 % Wilson interval and the per-seed counts, mean held-out loss, the perception probe
(``OUT/push_marked-probe.txt``) and, when ``OUT/push_marked-cost.csv`` exists (``scripts/encoder_cost.py --format
csv``), tokens per frame, encoder GFLOPs and encode ms per frame. Then the paper's two readings: S2 vs one scale of
the same encoder (are the intervals disjoint?) and the smallest encoder with S2 vs the largest at one scale.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from policy_table import collect, runs_by_execution  # noqa: E402

from s2robot.evaluation.metrics import wilson_interval  # noqa: E402

ROWS = {  # row -> (encoder, scales)
    "state": ("privileged state (upper bound)", "-"),
    "mnv2_s1": ("mobilenet_v2", "1"), "mnv2_s12": ("mobilenet_v2", "1,2"),
    "lite0_s1": ("efficientnet_lite0", "1"), "lite0_s12": ("efficientnet_lite0", "1,2"),
    "lite1_s1": ("efficientnet_lite1", "1"), "lite1_s12": ("efficientnet_lite1", "1,2"),
    "lite2_s1": ("efficientnet_lite2", "1"), "lite2_s12": ("efficientnet_lite2", "1,2"),
    "mnv2random_s12": ("mobilenet_v2, random init", "1,2"),
    "resnet18_trainable": ("resnet18, trainable (batch 16)", "-"),
}


def _probe(out: Path) -> dict[str, str]:
    path = out / "push_marked-probe.txt"
    found = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        m = re.match(r"(\S+) .*held-out accuracy ([0-9.]+) \(seeds ([0-9., ]+);", line)
        if m:
            found[m.group(1)] = f"{float(m.group(2)):.2f} ({m.group(3)})"
    return found


def _cost(out: Path) -> dict[tuple[str, str], dict]:
    path = out / "push_marked-cost.csv"
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return {(r["encoder"], r["scales"]): r for r in csv.DictReader(lines)}


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/study")
    groups = collect(out)
    probe, cost = _probe(out), _cost(out)
    print("| encoder | S2 scales | success (pooled) | 95% Wilson CI | per seed | held-out loss | detail probe "
          "(seeds) | tokens/frame | GFLOPs/frame | encode ms/frame |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    ci = {}
    for row, (enc_name, scales) in ROWS.items():
        kinds = runs_by_execution(groups, f"push_marked-{row}")  # one per way the chunks were executed in eval
        for how, runs in sorted(kinds.items()):
            enc = enc_name if len(kinds) == 1 else f"{enc_name} [{how}]"
            k, n = sum(r["k"] for r in runs), sum(r["n"] for r in runs)
            lo, hi = wilson_interval(k, n)
            if len(kinds) == 1:  # the readings below compare rows evaluated one way only
                ci[row] = (k / n, lo, hi)
            per = ", ".join(f"{r['k']}/{r['n']}" for r in sorted(runs, key=lambda r: r["seed"]))
            vals = [r["val"] for r in runs if r["val"] is not None]
            loss = f"{sum(vals) / len(vals):.4f}" if vals else ""
            c = cost.get((enc_name.split(",")[0], scales), {})
            print(f"| {enc} | {scales} | **{k}/{n} = {100 * k / n:.0f}%** | {100 * lo:.0f}-{100 * hi:.0f}% | {per} "
                  f"| {loss} | {probe.get(row, '')} | {c.get('tokens', '')} | {c.get('GFLOPs/frame', '')} "
                  f"| {c.get('ms/frame', '')} |")
    print()
    for name in ("mnv2", "lite0", "lite1", "lite2"):
        a, b = ci.get(f"{name}_s12"), ci.get(f"{name}_s1")
        if a and b:
            verdict = ("S2 better, intervals disjoint" if a[1] > b[2] else "one scale better, intervals disjoint"
                       if b[1] > a[2] else "intervals overlap")
            print(f"- {name}: S2 (1,2) {100 * a[0]:.0f}% vs one scale {100 * b[0]:.0f}%: {verdict}")
    a, b = ci.get("lite0_s12"), ci.get("lite2_s1")
    if a and b:
        print(f"- Lite0 with S2 {100 * a[0]:.0f}% ({100 * a[1]:.0f}-{100 * a[2]:.0f}%) vs Lite2 at one scale "
              f"{100 * b[0]:.0f}% ({100 * b[1]:.0f}-{100 * b[2]:.0f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
