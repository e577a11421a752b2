"""The CLI layer: hydra composition, group overrides and the dataset=PATH shorthand."""

from __future__ import annotations

import pytest

from s2robot import cli


def test_dataset_path_shorthand_and_passthrough():
    assert cli.rewrite_overrides(["dataset=/tmp/x.zarr", "seed=3"]) == ["dataset.path=/tmp/x.zarr", "seed=3"]


def test_unknown_group_option_is_named():
    with pytest.raises(SystemExit, match="not a known task config"):
        cli.rewrite_overrides(["task=does_not_exist"])


def test_override_without_equals_is_rejected():
    with pytest.raises(SystemExit, match="not key=value"):
        cli.rewrite_overrides(["oops"])


def test_unknown_verb(capsys):
    with pytest.raises(SystemExit, match="unknown verb"):
        cli.main(["frobnicate"])


def test_help_lists_every_verb(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert verb in out
