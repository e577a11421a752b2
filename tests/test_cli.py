"""The CLI layer: hydra composition, group overrides and the dataset=PATH shorthand."""

from __future__ import annotations

import pytest

from s2robot import cli
from s2robot.cli_checks import group_options


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


def test_group_config_from_a_users_file(tmp_path, monkeypatch):
    """``robot=./my_robot.yaml`` / ``task=/abs/my_task.yaml`` replace the group with the file; dotted overrides of
    that group apply on top of the file, not of the default."""
    from omegaconf import OmegaConf

    shipped = group_options("robot")
    src = OmegaConf.load(__import__("importlib").import_module("s2robot.configs").__file__.replace(
        "__init__.py", "robot/rosbridge_lift_cube.yaml"))
    src.name = "my_robot"
    src.port = 9191
    mine = tmp_path / "my_robot.yaml"
    OmegaConf.save(src, mine)
    assert "my_robot" not in shipped
    monkeypatch.chdir(tmp_path)
    cfg = cli.compose("deploy", ["robot=./my_robot.yaml", "robot.rate_hz=3.0"])
    assert cfg.robot.name == "my_robot" and cfg.robot.port == 9191 and cfg.robot.rate_hz == 3.0
    task = tmp_path / "my_task.yaml"
    task.write_text("name: lift_cube\ncameras: [front]\nimage_size: 64\nmax_episode_steps: 30\n")
    cfg = cli.compose("train", [f"task={task}", "task.image_size=48"])
    assert cfg.task.cameras == ["front"] and cfg.task.max_episode_steps == 30 and cfg.task.image_size == 48
    assert "env_kwargs" not in cfg.task  # nothing of the default task leaks into the user's file


def test_group_config_file_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such config file"):
        cli.compose("train", [f"task={tmp_path}/missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(SystemExit, match="must hold a mapping"):
        cli.compose("train", [f"task={bad}"])
