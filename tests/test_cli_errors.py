"""One way of reporting errors: one line + non-zero exit for user errors, --help per verb, unknown keys named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from s2robot import cli


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "s2robot.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("verb", ["train", "cache", "collect", "eval", "deploy", "demo"])
def test_every_config_verb_has_help_with_groups_and_keys(verb, capsys):
    assert cli.main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: s2robot {verb}")
    assert "keys and their defaults" in out
    if verb in ("train", "cache"):
        assert "encoder  default: mobilenet_v2" in out and "options:" in out
    if verb == "train":
        assert "steps: 3000" in out and "lr: 0.0003" in out


def test_cfg_job_is_accepted(capsys):
    assert cli.main(["train", "--cfg", "job", "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


def test_misspelled_key_is_one_line_naming_the_nearest():
    r = _run("train", "train.stepz=10")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "s2robot train: unknown config key 'train.stepz'; did you mean train.steps? "
        "(`s2robot train --help` lists every key)"]


def test_plus_cannot_add_a_key_nothing_reads():
    with pytest.raises(SystemExit, match=r"\+train.stepz adds a key that nothing reads; did you mean train.steps\?"):
        cli.main(["train", "+train.stepz=10", "--cfg", "job"])
    assert cli.main(["eval", "+env_kwargs.max_delta=0.01", "--cfg", "job"]) == 0  # free-form make_env kwargs
    assert cli.main(["demo", "+stages.train.optim.weight_decay=0.1", "--cfg", "job"]) == 0  # a train.yaml key
    with pytest.raises(SystemExit, match="configs/train.yaml does not have"):
        cli.main(["demo", "+stages.train.optim.wd=0.1", "--cfg", "job"])


def test_user_errors_of_every_verb_are_one_line_without_traceback(tmp_path):
    (tmp_path / "plain").mkdir()
    cases = [
        (["dataset", "info", str(tmp_path / "plain")], "s2robot dataset info: ", "is not a zarr v3 dataset store"),
        (["dataset", "verify", str(tmp_path / "nope.zarr")], "s2robot dataset verify: ", "not found"),
        (["cache", f"dataset={tmp_path / 'plain'}", "encoder=mvp_vit_s16", "encoder.checkpoint=/nope.pth"],
         "s2robot cache: ", "/nope.pth"),
        (["collect", "episodes=-1", f"out={tmp_path / 'c.zarr'}"], "s2robot collect: ", "episodes"),
        (["collect", "action_noise=nan", f"out={tmp_path / 'c.zarr'}"], "s2robot collect: ", "action_noise"),
        (["eval", f"checkpoint={tmp_path / 'none'}"], "s2robot eval: ", "not found"),
    ]
    for args, prefix, words in cases:
        r = _run(*args)
        assert r.returncode != 0, args
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(prefix) and words in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "c.zarr").exists()  # a bad value is refused before a store is created
    r = _run("dataset", "info", str(tmp_path / "plain"), env={"S2ROBOT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr  # the debug switch shows it


def test_a_bug_keeps_its_traceback(monkeypatch):
    import s2robot.datasets.cli as dcli

    monkeypatch.setattr(dcli, "summary", lambda path: None.missing)  # an AttributeError: a bug, not a user error
    with pytest.raises(AttributeError):
        cli.main(["dataset", "info", "x"])


def test_help_piped_into_head_has_no_traceback():
    r = subprocess.run(f"{sys.executable} -m s2robot.cli train --help | head -2", shell=True, capture_output=True,
                       text=True, timeout=300)
    assert r.stdout.startswith("usage: s2robot train") and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("verb", ["train", "eval"])
def test_help_lists_every_task_option_nested_ones_compactly(verb, capsys):
    """``--help`` and the "not a known task config" line list a group's options from one function
    (``cli_checks.group_options``): every top-level task YAML by name, the 50 Meta-World tasks of
    ``configs/task/metaworld/`` as one ``metaworld/<name> (50 options)`` entry rather than 50 names or none."""
    from s2robot.configs import configs_dir

    assert cli.main([verb, "--help"]) == 0
    task_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("task "))
    options = task_line.split("options:", 1)[1]
    n_metaworld = len(list((configs_dir() / "task" / "metaworld").glob("*.yaml")))
    assert n_metaworld == 50 and f"metaworld/<name> ({n_metaworld} options)" in options
    for top in (configs_dir() / "task").glob("*.yaml"):
        assert top.stem in [o.strip() for o in options.split(",")], top.stem
    assert "pick-place-v3" not in options  # compact: no Meta-World task names
    with pytest.raises(SystemExit) as e:
        cli.main([verb, "task=no_such_task"])
    assert task_line.split("options:", 1)[1].strip() in str(e.value).replace("'", "").replace("[", "").replace("]", "")


def test_collect_short_of_successes_is_one_line_and_keeps_the_stored_episodes(tmp_path):
    """An expert that runs out of attempts (a setting: max_attempts, action_noise) is a user error, not a bug:
    one line naming the counts and the way on, exit 1, and the episodes already stored stay for the resume."""
    from s2robot.datasets.store import EpisodeStore

    out = tmp_path / "c.zarr"
    r = _run("collect", "task=lift_cube", "episodes=2", "max_attempts=1", "task.cameras=[]",
             "task.env_kwargs.state_obs=true", f"out={out}")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if "s2robot collect:" in ln]
    assert len(errors) == 1 and "after 1 attempts" in errors[0] and "max_attempts" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    with EpisodeStore.open(out) as store:  # the one attempt succeeded (the expert's ~100 %) and was kept
        assert store.n_episodes == 1
    r = _run("collect", "task=lift_cube", "episodes=2", "task.cameras=[]", "task.env_kwargs.state_obs=true",
             f"out={out}")
    assert r.returncode == 0, r.stderr
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2
