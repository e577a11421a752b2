"""One place per default: the config dataclasses are the schema, YAML files override; every section is validated."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest
import yaml
from omegaconf import OmegaConf

from s2robot import cli
from s2robot.configs import configs_dir
from s2robot.policies.conditioning import ConditioningConfig
from s2robot.policies.factory import POLICY_TYPES
from s2robot.training.optim import OptimConfig
from s2robot.training.train import DatasetConfig, EMAConfig, TrainConfig, TrainRunConfig, resolved_config


def defaults(cls) -> dict:
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)
            if f.default is not MISSING or f.default_factory is not MISSING}


def restated(values: dict, cls) -> list[str]:
    """Keys of ``values`` that only repeat the dataclass default."""
    d = defaults(cls)
    return sorted(k for k, v in values.items() if k in d and d[k] == v)


@pytest.mark.parametrize("path", sorted((configs_dir() / "policy").glob("*.yaml")), ids=lambda p: p.stem)
def test_policy_yamls_set_only_what_differs_from_the_schema(path):
    data = yaml.safe_load(path.read_text())
    head = POLICY_TYPES[data["type"]][0]
    assert restated({k: v for k, v in data.items() if k != "obs"}, head) == []
    assert restated(data.get("obs") or {}, ConditioningConfig) == []
    unknown = set(data) - {f.name for f in fields(head)} - {"name", "type", "obs"}
    assert not unknown


def test_dataset_yaml_holds_no_default_of_its_own():
    assert yaml.safe_load((configs_dir() / "dataset" / "default.yaml").read_text()) == {"path": None}


def test_train_schema_is_the_one_source_of_the_composed_defaults():
    """configs/train.yaml only picks groups: every other key of the composed config is the schema's default."""
    from dataclasses import asdict

    assert set(yaml.safe_load((configs_dir() / "train.yaml").read_text())) == {"defaults"}
    cfg = OmegaConf.to_container(cli.compose("train"))
    schema = asdict(TrainRunConfig())
    assert {k: v for k, v in cfg.items() if k not in ("task", "policy", "encoder")} == {
        k: v for k, v in schema.items() if k not in ("task", "policy", "encoder")}
    assert cfg["train"] == defaults(TrainConfig) and cfg["optim"] == defaults(OptimConfig)
    assert cfg["ema"] == defaults(EMAConfig)


def restated_leaves(values: dict, base: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``values`` (nested) that only repeat the value ``base`` already has."""
    out = []
    for k, v in values.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            out += restated_leaves(v, base[k], f"{prefix}{k}.")
        elif k in base and base[k] == v:
            out.append(f"{prefix}{k}")
    return out


@pytest.mark.parametrize("verb", ["collect", "cache", "train", "eval"])
def test_demo_stages_set_only_what_differs_from_the_verb_config(verb):
    stages = yaml.safe_load((configs_dir() / "demo.yaml").read_text())["stages"]
    base = OmegaConf.to_container(cli.compose(verb), resolve=False)
    assert restated_leaves(stages.get(verb) or {}, base) == []


def test_restated_leaves_finds_a_repeated_default():
    base = OmegaConf.to_container(cli.compose("train"))
    assert restated_leaves({"train": {"steps": 7, "batch_size": 64}, "optim": {"lr": 3e-4}}, base) == [
        "train.batch_size", "optim.lr"]


def test_composed_train_config_resolves_to_the_schema_with_every_value():
    cfg = resolved_config(cli.compose("train", ["policy=diffusion_unet", "dataset=/tmp/d.zarr"]))
    assert cfg["policy"]["unet_down_dims"] == [64, 128, 256] and cfg["policy"]["horizon"] == 16
    assert cfg["policy"]["obs"] == defaults(ConditioningConfig)
    assert cfg["dataset"] == {**defaults(DatasetConfig), "path": "/tmp/d.zarr"}
    assert cfg["normalizer"] == {"action": "minmax", "proprio": "minmax", "state": "minmax"}


@pytest.mark.parametrize("over, match", [
    ({"dataset": {"path": "/x.zarr", "num_workerz": 2}}, r"dataset: unknown key\(s\) \['num_workerz'\]"),
    ({"dataset": {"path": "/x.zarr", "val_ratio": 1.5}}, r"dataset.val_ratio must be in \[0, 1\)"),
    ({"normalizer": {"actoin": "minmax"}}, r"normalizer: unknown key\(s\) \['actoin'\]"),
    ({"normalizer": {"action": "minmx"}}, r"normalizer: mode\(s\) \{'action': 'minmx'\}"),
    ({"optimm": {}}, r"train config: unknown key\(s\) \['optimm'\]"),
    ({"policy": {"type": "bc", "obs": {"poolling": "mean"}}}, r"policy.obs: unknown key\(s\) \['poolling'\]"),
])
def test_every_section_is_validated_naming_the_unknown_key(over, match):
    cfg = {"policy": {"type": "bc"}, "dataset": {"path": "/x.zarr"}, **over}
    with pytest.raises(ValueError, match=match):
        resolved_config(cfg)


def test_train_refuses_a_dataset_typo_before_reading_the_store(tmp_path):
    from s2robot.training.train import train

    with pytest.raises(ValueError, match=r"num_workerz"):
        train({"policy": {"type": "bc"}, "dataset": {"path": str(tmp_path / "missing.zarr"), "num_workerz": 0}})


def test_help_lists_schema_defaults_the_yaml_leaves_out(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    dataset = out[out.index("  dataset:"):]
    assert "num_workers: null" in dataset and "val_ratio: 0.1" in dataset
    assert "unet_down_dims" not in out  # policy=bc_mlp: only the BC head's keys
    assert "pooling: attention" in out  # policy.obs defaults (bc_mlp.yaml has no obs section)
    assert ("task x policy files (configs/task_policy, applied before key=value overrides): push_t_diffusion_unet, "
            "stack_cubes_diffusion_unet") in out


def test_schema_types_and_plus_on_an_existing_key_are_one_line():
    with pytest.raises(SystemExit, match=r"^s2robot train: train.steps=abc: Value 'abc' of type 'str' could not be "
                                         r"converted to Integer$"):
        cli.compose("train", ["train.steps=abc"])
    with pytest.raises(SystemExit, match=r"^s2robot train: train.steps is already a key; set it without the \+$"):
        cli.compose("train", ["+train.steps=5"])


def test_overrides_apply_over_the_schema():
    cfg = cli.compose("train", ["train.steps=7", "threads=null", "optim.betas=[0.9,0.99]", "policy=diffusion_unet",
                                "policy.unet_down_dims=[32,64]", "dataset=/d.zarr", "dataset.num_workers=0"])
    assert cfg.train.steps == 7 and cfg.threads is None and list(cfg.optim.betas) == [0.9, 0.99]
    assert list(cfg.policy.unet_down_dims) == [32, 64] and cfg.dataset.path == "/d.zarr"
    assert cfg.dataset.num_workers == 0 and cfg.train.batch_size == TrainConfig().batch_size


@pytest.mark.parametrize("path", sorted((configs_dir() / "task").rglob("*.yaml")), ids=lambda p: p.stem)
def test_task_yamls_leave_env_id_episode_limit_and_fps_to_the_env(path):
    """envs/tasks.py (Meta-World: envs/metaworld_tasks.py) is the one source of a task's gymnasium id and episode
    limit; a task config names the task and may override the limit with a number."""
    data = yaml.safe_load(path.read_text())
    assert "env_id" not in data and data["max_episode_steps"] is None
    assert "fps" not in data  # the env's control rate (metadata["render_fps"]) is what collect records


# (task config, env_kwargs key) -> value, where a task config means to differ from its env class's default. Empty:
# every shipped task runs at the env defaults. Add a row here (with the reason) to ship a different value.
ENV_KWARGS_INTENDED_DIFFERENCES: dict[tuple[str, str], object] = {}
TASK_KEYS_NOT_ENV_KWARGS = ("task", "image_size", "cameras", "render_mode")  # task-config keys / not user-tunable


def _env_class_defaults(name: str) -> dict:
    """Keyword defaults of the env class a task config's env_kwargs go to (the one source of those defaults)."""
    import inspect

    from s2robot.envs.base import ManipulationEnv
    from s2robot.envs.metaworld_tasks import MetaWorldEnv  # imports metaworld lazily: fine in any venv

    cls = MetaWorldEnv if name.startswith("metaworld/") else ManipulationEnv
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty and k not in TASK_KEYS_NOT_ENV_KWARGS}


@pytest.mark.parametrize("path", sorted((configs_dir() / "task").rglob("*.yaml")), ids=lambda p: p.stem)
def test_task_env_kwargs_are_the_env_defaults(path):
    """A task config's env_kwargs list every tunable keyword of its env class (so ``task.env_kwargs.max_delta=0.02``
    needs no ``+``: hydra refuses a key the YAML lacks) at the class's default: envs/base.py (ManipulationEnv;
    Meta-World: envs/metaworld_tasks.py MetaWorldEnv) is the one source of the values, and a value that differs
    must be listed in ENV_KWARGS_INTENDED_DIFFERENCES."""
    data = yaml.safe_load(path.read_text())
    env_defaults = _env_class_defaults(data["name"])
    kwargs = data["env_kwargs"]
    assert sorted(kwargs) == sorted(env_defaults), f"{path.name}: env_kwargs keys != the env's keywords"
    for key, value in kwargs.items():
        expected = ENV_KWARGS_INTENDED_DIFFERENCES.get((data["name"], key), env_defaults[key])
        assert value == expected and isinstance(value, bool) == isinstance(expected, bool), (
            f"{path.name}: env_kwargs.{key}={value!r}, the env default is {env_defaults[key]!r}; list an intended "
            f"difference in ENV_KWARGS_INTENDED_DIFFERENCES")


def test_env_kwargs_overrides_need_no_plus():
    cfg = cli.compose("collect", ["task=push_t", "task.env_kwargs.state_obs=true", "task.env_kwargs.max_delta=0.02"])
    assert cfg.task.env_kwargs.state_obs is True and cfg.task.env_kwargs.max_delta == 0.02
    cfg = cli.compose("train", ["task=metaworld/pick-place-v3", "task.env_kwargs.terminate_on_success=false"])
    assert cfg.task.env_kwargs.terminate_on_success is False


def test_dataset_is_a_path_where_the_config_has_no_dataset_group():
    """train's dataset section is the schema's DatasetConfig (no dataset group): dataset=<anything> is its path."""
    assert cli.compose("train", ["dataset=default"]).dataset.path == "default"
    assert cli.compose("cache", ["dataset=/d.zarr"]).dataset.path == "/d.zarr"
    assert cli.compose("cache", ["dataset=default"]).dataset.path is None  # cache keeps the group option


@pytest.mark.parametrize("cpus, setting, expected", [({0, 1}, None, 2), (set(range(16)), None, 4), ({0, 1}, 3, 3)])
def test_loader_workers_default_to_the_usable_cpus_capped_at_4(monkeypatch, cpus, setting, expected):
    """dataset.num_workers=null starts min(4, CPUs this process may use) workers (a 2-core machine: 2, not the 4 that
    made torch warn on every run); an explicit value is used as given."""
    import os

    import torch

    import s2robot.training.train as tr
    from s2robot.training.ddp import DistInfo

    class Windows:  # what the loader reads of a training dataset
        augment_views, token_keys = 1, ()

        def __len__(self):
            return 64

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    c = {"dataset": {"num_workers": setting}}
    _, loader, _ = tr._make_loader(c, DistInfo(), torch.device("cpu"), Windows(), tr.TrainConfig(batch_size=8), seed=0)
    assert loader.num_workers == expected


def _specialisations() -> list:
    return sorted((configs_dir() / "task_policy").glob("*.yaml"))


@pytest.mark.parametrize("path", _specialisations(), ids=lambda p: p.stem)
def test_each_task_policy_specialisation_names_a_real_task_and_policy(path):
    """``configs/task_policy/<task>_<policy>.yaml`` applies only when hydra's ``${task}_${policy}`` spells its name,
    so a misspelt file would silently never apply: its name must split into a shipped task and policy, and its keys
    must reach the composed config of that pair (the command line still wins)."""
    from s2robot.cli_checks import group_options

    pairs = [(t, p) for t in group_options("task") for p in group_options("policy") if f"{t}_{p}" == path.stem]
    assert len(pairs) == 1, f"{path.name}: not <task>_<policy> of a shipped task and policy"
    task, policy = pairs[0]
    want = OmegaConf.to_container(OmegaConf.load(path))
    assert set(want) == {"policy"} and want["policy"], f"{path.name}: sets policy keys only"
    for verb in ("train", "demo"):
        cfg = cli.compose(verb, [f"task={task}", f"policy={policy}"])
        for key, value in want["policy"].items():
            assert cfg.policy[key] == value, (verb, key)


def test_push_t_and_stack_cubes_diffusion_replan_every_step_by_default_and_nothing_else_changes():
    """push_t and stack_cubes x diffusion_unet: one action per chunk, no ensembling (docs/policies.md points 8, 9);
    the same policy on lift_cube, another policy on those tasks, a Meta-World task and a command-line override keep
    their own values."""
    def policy(*overrides):
        cfg = cli.compose("train", list(overrides))
        return cfg.policy.get("n_action_steps"), cfg.policy.get("temporal_ensemble")

    for task in ("push_t", "stack_cubes"):
        assert policy(f"task={task}", "policy=diffusion_unet") == (1, None)
        assert policy(f"task={task}", "policy=bc_mlp") == (None, None)
        assert policy(f"task={task}", "policy=diffusion_unet", "policy.n_action_steps=8",
                      "policy.temporal_ensemble=0") == (8, 0)
    assert policy("task=lift_cube", "policy=diffusion_unet") == (None, None)  # the schema's 8 and 0.0 apply later
    assert policy("task=metaworld/pick-place-v3", "policy=diffusion_unet") == (None, None)
