"""``scripts/policy_table.py`` (and ``scripts/s2_table.py`` on top of it) name how an evaluation executed the chunks
with the package's own wording (``evaluation.report.execution_label``, the eval plot title's ``execution_text``),
so a table row and the plot of the same evaluation say the same thing, and evaluations that executed the chunks
differently (ACT, whole chunks, the first k actions of each chunk) are never pooled."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from s2robot.evaluation.report import execution_text
from script_loader import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

EXECUTIONS = {  # eval folder -> summary["execution"] (None: a summary written before execution was recorded)
    "eval": {"temporal_ensemble": 0.0, "replan_every": None},
    "eval-m01": {"temporal_ensemble": 0.1, "replan_every": None},
    "eval-chunks": {"temporal_ensemble": None, "replan_every": None},
    "eval-k4": {"temporal_ensemble": None, "replan_every": 4, "n_action_steps": 8},
    "eval-replan1": {"temporal_ensemble": None, "replan_every": 1},  # replanning every step, asked at eval
    "eval-n1": {"temporal_ensemble": None, "replan_every": None, "n_action_steps": 1},  # ... the policy's own
    "eval-n1-act": {"temporal_ensemble": 0.0, "replan_every": None, "n_action_steps": 1},  # ACT of 1-action chunks
    "eval-old": None,
}


def _script(name: str):
    sys.path.insert(0, str(SCRIPTS))  # s2_table imports policy_table as a sibling, as when run as a script
    try:
        return load_script(SCRIPTS / f"{name}.py")
    finally:
        sys.path.remove(str(SCRIPTS))


def _study(root: Path, run: str, evals=tuple(EXECUTIONS), seeds=(0, 1)) -> None:
    for seed in seeds:
        for folder in evals:
            execution = EXECUTIONS[folder]
            d = root / "runs" / f"{run}-seed{seed}" / folder
            d.mkdir(parents=True)
            summary = {"n_success": 3 + seed, "n_episodes": 10, "mean_max_score": 0.5}
            if execution is not None:
                summary["execution"] = execution
            (d / "summary.json").write_text(json.dumps(summary))


def test_groups_are_labelled_with_execution_text(tmp_path):
    table = _script("policy_table")
    _study(tmp_path, "lift_cube-images-bc_mlp")
    groups = table.collect(tmp_path)
    labels = {execution_text(e).removeprefix("; ") if e else "whole chunks" for e in EXECUTIONS.values()}
    assert labels == {"ACT temporal ensembling m=0", "ACT temporal ensembling m=0.1", "whole chunks",
                      "whole chunks, first 4 actions of each chunk", "replan every step"}
    assert set(groups) == {f"lift_cube-images-bc_mlp [{label}]" for label in labels}
    assert len(groups["lift_cube-images-bc_mlp [whole chunks]"]) == 4  # eval-chunks and eval-old, 2 seeds each
    assert len(groups["lift_cube-images-bc_mlp [replan every step]"]) == 6  # eval-replan1, -n1, -n1-act: one way
    others = sorted(labels - {"whole chunks", "replan every step"})
    assert [len(groups[f"lift_cube-images-bc_mlp [{label}]"]) for label in others] == [2] * 3
    assert set(table.runs_by_execution(groups, "lift_cube-images-bc_mlp")) == labels


def test_policy_table_prints_every_group(tmp_path, monkeypatch, capsys):
    table = _script("policy_table")
    _study(tmp_path, "push_t-images-diffusion_unet")
    monkeypatch.setattr(sys, "argv", ["policy_table.py", str(tmp_path)])
    table.main()
    out = capsys.readouterr().out
    assert "| push_t-images-diffusion_unet [whole chunks, first 4 actions of each chunk] | 2 | **7/20 = 35%** |" in out


@pytest.mark.parametrize("evals", [("eval",), ("eval", "eval-chunks")])
def test_s2_table_finds_its_rows(tmp_path, monkeypatch, capsys, evals):
    """s2_table looks rows up by run name; one execution kind: one row per encoder, else one per kind."""
    s2_table = _script("s2_table")
    _study(tmp_path, "push_marked-mnv2_s12", evals)
    _study(tmp_path, "push_marked-mnv2_s1", evals)
    monkeypatch.setattr(sys, "argv", ["s2_table.py", str(tmp_path)])
    s2_table.main()
    out = capsys.readouterr().out
    if len(evals) == 1:
        assert "| mobilenet_v2 | 1,2 | **7/20 = 35%** |" in out and "| mobilenet_v2 | 1 | **7/20 = 35%** |" in out
        assert "- mnv2: S2 (1,2) 35% vs one scale 35%: intervals overlap" in out
    else:
        assert "| mobilenet_v2 [whole chunks] | 1,2 | **7/20" in out
        assert "| mobilenet_v2 [ACT temporal ensembling m=0] | 1 | **7/20" in out
        assert "- mnv2:" not in out  # two kinds: no reading


def test_s2_table_shows_the_resnet_baselines_cost(tmp_path, monkeypatch, capsys):
    """``encoder_cost.py --resnet-baseline`` writes the trainable ResNet-18 row's tokens, GFLOPs and ms, and
    s2_table puts them beside the ``resnet18_trainable`` runs."""
    cost, s2_table = _script("encoder_cost"), _script("s2_table")
    assert cost.main(["--encoders", "--resnet-baseline", "--format", "csv", "--runs", "1", "--batch", "1"]) == 0
    (tmp_path / "push_marked-cost.csv").write_text(capsys.readouterr().out)
    _study(tmp_path, "push_marked-resnet18_trainable", ("eval",))
    monkeypatch.setattr(sys, "argv", ["s2_table.py", str(tmp_path)])
    s2_table.main()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| resnet18"))
    assert re.fullmatch(r"\| resnet18, trainable \(batch 16\) \| - \| \*\*7/20 = 35%\*\* \| .* \| 1x64 \| 0\.6\d\d \| "
                        r"\d+\.\d\d \|", row), row
