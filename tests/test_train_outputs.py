"""Training outputs worth looking at: a learning-curve PNG, optional W&B (offline), Ctrl-C saves and says how to resume."""

from __future__ import annotations

import signal
import sys
import types
from pathlib import Path

import pytest

from policy_testlib import one_torch_thread  # noqa: F401  (autouse fixture)
from policy_testlib import make_store, train_cfg
from s2robot.training.train import train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data") / "demo.zarr")


def test_learning_curve_png_beside_the_csv(tmp_path, store):
    from PIL import Image

    train(train_cfg(store, tmp_path / "run", "bc_mlp", steps=4, train={"val_every": 2, "log_every": 1}))
    png = tmp_path / "run" / "learning_curve.png"
    assert (tmp_path / "run" / "train.csv").is_file() and png.is_file()
    assert Image.open(png).size[0] >= 600


def test_learning_curve_has_a_success_panel_when_rollouts_ran(tmp_path):
    from PIL import Image

    from s2robot.training.logger import RunLogger

    log = RunLogger(tmp_path / "a", tensorboard=False)
    for step in (1, 2):
        log.log("train", step, {"loss": 1.0 / step})
    log.close()
    log = RunLogger(tmp_path / "b", tensorboard=False)
    for step in (1, 2):
        log.log("train", step, {"loss": 1.0 / step})
        log.log("eval", step, {"success_rate": 0.5, "mean_max_score": None})
    log.close()
    assert Image.open(tmp_path / "b" / "learning_curve.png").size[0] > Image.open(tmp_path / "a" / "learning_curve.png").size[0]


def test_tensorboard_is_on_by_default():
    from s2robot.cli import compose

    assert compose("train").train.tensorboard is True


def test_wandb_offline_logging(tmp_path, monkeypatch):
    calls = {}

    class Run:
        def log(self, values, step):
            calls.setdefault("log", []).append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    from s2robot.training.logger import RunLogger

    log = RunLogger(tmp_path / "run", tensorboard=False, wandb="offline", config={"seed": 3})
    log.log("train", 5, {"loss": 0.5, "lr": None})
    log.close()
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"] == {"seed": 3}
    assert calls["log"] == [(5, {"train/loss": 0.5})] and calls["finished"]
    with pytest.raises(ValueError, match="train.wandb='yes'"):
        RunLogger(tmp_path / "x", wandb="yes")


def test_wandb_missing_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    from s2robot.training.logger import RunLogger

    with pytest.raises(ModuleNotFoundError, match="needs the wandb package: pip install wandb"):
        RunLogger(tmp_path / "run", tensorboard=False, wandb="offline")


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, store, monkeypatch, capsys):
    from s2robot.training import logger as logger_mod

    real_log = logger_mod.RunLogger.log

    def log_then_interrupt(self, stream, step, values):
        real_log(self, stream, step, values)
        if stream == "train" and step == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers

    monkeypatch.setattr(logger_mod.RunLogger, "log", log_then_interrupt)
    monkeypatch.setattr(sys, "argv", ["s2robot", "train", "policy=bc_mlp", f"dataset={store}"])
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(train_cfg(store, run, "bc_mlp", steps=8, train={"log_every": 1}))
    assert (run / "checkpoints" / "step_0000004" / "model.safetensors").is_file()  # the next step boundary
    out = capsys.readouterr().out
    assert f"resume with: s2robot train policy=bc_mlp dataset={store} out_dir={run} resume=true" in out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(logger_mod.RunLogger, "log", real_log)
    final = train(train_cfg(store, run, "bc_mlp", steps=8, resume=True))
    assert Path(final).name == "step_0000008"


def test_stop_request_leaves_ctrl_c_alone_when_disabled():
    from s2robot.training.interrupt import StopRequest, resume_command

    with StopRequest(enabled=False) as stop:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert not stop.requested
    assert resume_command("outputs/demo/train", ["demo", "out=outputs/demo"]) == "s2robot demo out=outputs/demo"
