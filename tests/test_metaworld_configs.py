"""Meta-World task configs compose in any venv (``task=metaworld/<name>``, a nested config-group option); a typo is
one line naming the valid options, not a "no such config file". The envs themselves: tests/test_metaworld.py."""

from __future__ import annotations

import pytest

from s2robot import cli
from s2robot.cli_checks import group_options


def test_nested_task_option_composes():
    cfg = cli.compose("collect", ["task=metaworld/pick-place-v3", "episodes=3"])
    assert cfg.task.name == "metaworld/pick-place-v3" and cfg.task.cameras == ["corner", "gripperPOV"]
    assert cfg.task.max_episode_steps is None and "env_id" not in cfg.task  # from envs/metaworld_tasks.py
    assert cfg.out == "outputs/demos/metaworld/pick-place-v3.zarr"
    assert "metaworld/door-open-v3" in group_options("task") and "push_t" in group_options("task")


def test_typo_in_a_nested_option_names_the_options(capsys):
    with pytest.raises(SystemExit, match=r"'metaworld/pick-plaec-v3' is not a known task config; choose one of "
                                         r"\[.*'push_t'.*'metaworld/<name> \(50 options\)'\]"):
        cli.compose("train", ["task=metaworld/pick-plaec-v3"])


def test_dataset_info_on_a_hand_built_store_names_the_fix(tmp_path, capsys):
    """Issue 16: a hand-converted zarr group (data arrays + episode ends, no format_version) is refused with one line
    that says how to write a valid store, not just that it is not one."""
    import numpy as np
    import zarr

    g = zarr.open_group(tmp_path / "hand.zarr", mode="w")
    g.create_group("data").create_array("action", data=np.zeros((5, 4), np.float32))
    g.create_group("meta").create_array("episode_ends", data=np.array([5], np.int64))
    assert cli.main(["dataset", "info", str(tmp_path / "hand.zarr")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lack 'format_version'" in err and "EpisodeStore.create" in err
