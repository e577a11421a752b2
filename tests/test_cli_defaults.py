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


@pytest.mark.parametrize("extra", [[], ["encoder.scales=[1]", "pool_grid=2"]])
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
