"""Defaults that agree: the verbs share one task and one encoder, and every hint a verb prints is a command that works."""

from __future__ import annotations

import shlex

import pytest

from s2robot import cli


def test_verbs_default_to_the_same_task_and_encoder():
    tasks = {verb: cli.compose(verb).task.name for verb in ("collect", "train", "demo")}
    encoders = {verb: cli.compose(verb).encoder.name for verb in ("cache", "train", "demo")}
    assert set(tasks.values()) == {"lift_cube"}, tasks
    assert set(encoders.values()) == {"mobilenet_v2"}, encoders


def test_collect_action_noise_defaults_to_the_task_configs_demo_action_noise(tmp_path, capsys):
    """One source per default: a task config may set demo_action_noise (stack_cubes: DART demos); collect (the verb
    and the demo's stage) takes it unless action_noise is given; a task without the key collects plain demos."""
    from s2robot.collection import collect
    from s2robot.datasets.store import EpisodeStore

    assert cli.compose("collect", ["task=stack_cubes"]).action_noise is None  # null: the task's
    task = dict(cli.compose("collect", ["task=stack_cubes"]).task)
    task["env_kwargs"] = dict(task["env_kwargs"])
    assert task["demo_action_noise"] == 0.3
    noise = {}
    for name, kwargs in [("task", {}), ("given", {"action_noise": 0.0})]:
        collect(task, episodes=1, out=tmp_path / f"{name}.zarr", image_size=32, cameras=["front"],
                progress=False, record_sim_state=False, **kwargs)
        store = EpisodeStore.open(tmp_path / f"{name}.zarr")
        noise[name] = store.attrs["collect"]["action_noise"]
        store.close()
    assert noise == {"task": 0.3, "given": 0.0}
    capsys.readouterr()
    assert cli.main(["dataset", "info", str(tmp_path / "task.zarr")]) == 0  # a user sees which demos a store holds
    assert "'action_noise': 0.3" in capsys.readouterr().out
    task.pop("demo_action_noise")
    collect(task, episodes=1, out=tmp_path / "plain.zarr", image_size=32, cameras=["front"], progress=False,
            record_sim_state=False)
    assert EpisodeStore.open(tmp_path / "plain.zarr").attrs["collect"]["action_noise"] == 0.0


@pytest.mark.parametrize("extra", [[], ["encoder.scales=[1]", "pool_grid=2"], ["encoder.engine=torch"]])
def test_cache_prints_a_train_command_that_picks_its_features(tmp_path, capsys, extra):
    from s2robot.datasets.feature_cache import feature_hash_for
    from s2robot.datasets.store import EpisodeStore
    from s2robot.encoders import build_encoder
    from s2robot.training.train import select_features
    from test_dataset_core import build_store

    path = tmp_path / "d.zarr"
    build_store(path, lengths=(3, 4))
    assert cli.main(["cache", f"dataset={path}", "encoder=vit_tiny_test", *extra]) == 0
    out = capsys.readouterr().out
    hint = next(line for line in out.splitlines() if line.startswith("train on them with: "))
    argv = shlex.split(hint.removeprefix("train on them with: "))
    assert argv[:2] == ["s2robot", "train"] and "feature_hash" not in hint
    assert "engine" not in hint  # how this machine encoded, not which encoder: training elsewhere needs no engine
    cfg = cli.compose("train", argv[2:])  # the hint composes: every key exists
    from omegaconf import OmegaConf

    enc = build_encoder(**OmegaConf.to_container(cfg.encoder), device="cpu")
    with EpisodeStore.open(path) as store:
        key, _ = select_features(store, enc, ["front", "wrist"], cfg.get("pool_grid"))
        assert key is not None and key in store.group["features"]
    assert key == feature_hash_for(enc, cfg.get("pool_grid"))


def test_warmup_longer_than_the_run_warns():
    import torch

    from s2robot.training.optim import OptimConfig, build_lr_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    with pytest.warns(UserWarning, match=r"optim.warmup_steps=500 is not shorter than the run \(train.steps=100\)"):
        build_lr_scheduler(opt, OptimConfig(warmup_steps=500), 100)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_lr_scheduler(opt, OptimConfig(warmup_steps=50), 100)


def test_train_hint_to_cache_is_a_command_that_caches_the_same_encoder(tmp_path):
    from omegaconf import OmegaConf

    from s2robot.datasets.feature_cache import cache_command

    enc_cfg = OmegaConf.to_container(cli.compose("demo").encoder)  # the demo's scales [1, 2], input_size 96
    argv = shlex.split(cache_command("/data/d.zarr", enc_cfg))
    assert argv[:2] == ["s2robot", "cache"]
    cfg = cli.compose("cache", argv[2:])
    assert cfg.dataset.path == "/data/d.zarr"
    assert OmegaConf.to_container(cfg.encoder) == enc_cfg  # same config, hence the same features/<hash>
