"""``s2robot eval`` end to end on a real MuJoCo task: a saved checkpoint of the real S2 diffusion policy (tiny
random ViT encoder, tiny U-Net) is loaded, evaluated in spawned MuJoCo workers and reported; per-episode results do
not depend on the number of envs. Also the demo's stage configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from s2robot.cli import compose


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from omegaconf import OmegaConf

    from s2robot.policies.normalizer import Normalizer
    from s2robot.encoders import build_encoder
    from s2robot.policies import ShapeMeta, build_policy
    from s2robot.training.checkpoint import save_checkpoint

    cfg = compose("train", ["task=lift_cube", "policy=diffusion_unet", "encoder=vit_tiny_test"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["policy"].update(unet_down_dims=[16, 32], num_inference_steps=2, step_embed_dim=16)
    enc = build_encoder(**cfg["encoder"])
    meta = ShapeMeta(cameras=["front", "wrist"], proprio_dim=9, action_dim=5, image_shape=[32, 32, 3],
                     token_shape=[enc.num_tokens, enc.out_dim], num_prefix=enc.num_prefix)
    rng = np.random.default_rng(0)
    norm = Normalizer().fit({"action": rng.uniform(-0.03, 0.03, (64, 5)), "proprio": rng.normal(size=(64, 9))})
    torch.manual_seed(0)
    policy = build_policy(cfg["policy"], meta, norm, enc)
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "step_0000001"
    return save_checkpoint(path, policy, {**cfg, "shape_meta": meta.to_dict()}, step=1, epoch=0)


def _eval(checkpoint, out, n_envs):
    from s2robot.evaluation.cli import run

    cfg = compose("eval", [f"checkpoint={checkpoint.parent.parent}", f"n_envs={n_envs}", "episodes=3",
                           "max_steps=5", f"out={out}", "n_videos=1", "device=cpu"])
    assert run(cfg) == 0
    return json.loads((out / "episodes.json").read_text()), json.loads((out / "summary.json").read_text())


def test_eval_verb_on_a_real_checkpoint_and_task(checkpoint, tmp_path, capsys):
    import imageio.v3 as iio

    eps1, s1 = _eval(checkpoint, tmp_path / "n1", 1)
    eps2, s2 = _eval(checkpoint, tmp_path / "n2", 2)
    out = capsys.readouterr().out
    assert "rendering 32 px images as the policy was trained on" in out and "success 0/3" in out
    assert s1["task"] == "lift_cube" and s1["n_episodes"] == 3 and s1["policy_forwards"] >= 1
    frame = next(iter(iio.imiter(s1["files"]["videos"][0])))
    assert frame.shape == (32 * 8 + 18, 2 * 256, 3)  # 32 px views enlarged 8x, side by side, over a text strip
    from s2robot.encoders.engine import openvino_available

    assert s1["policy"] == {"checkpoint": str(checkpoint), "step": 1, "trained_task": "lift_cube",
                            "trained_on": None, "num_inference_steps": 2,  # what was evaluated is in every report:
                            "encoder_engine": "torch",  # auto: a ViT runs torch
                            "denoiser_engine": "openvino" if openvino_available() else "torch"}
    for a, b in zip(eps1, eps2):  # N does not change any episode's outcome
        assert (a["episode"], a["seed"], a["length"], a["success"], a["end"]) == \
               (b["episode"], b["seed"], b["length"], b["success"], b["end"])
        assert a["max_score"] == pytest.approx(b["max_score"], abs=1e-4)


def test_eval_on_another_task_warns_and_records_the_training_task(checkpoint, tmp_path, capsys):
    from s2robot.evaluation.cli import run

    cfg = compose("eval", [f"checkpoint={checkpoint}", "task=push_t", "episodes=1", "n_envs=1", "max_steps=2",
                           f"out={tmp_path / 'e'}", "n_videos=0", "device=cpu"])
    assert run(cfg) == 0
    err = capsys.readouterr().err
    assert "the checkpoint was trained on 'lift_cube' but is evaluated on 'push_t'" in err
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["task"] == "push_t" and summary["policy"]["trained_task"] == "lift_cube"
    assert summary["policy"]["step"] == 1


def test_eval_overrides_the_ddim_step_count_and_records_it(checkpoint, tmp_path, monkeypatch):
    """``num_inference_steps=N`` runs N denoising steps per chunk (the checkpoint's config says 2) and the report
    names the count; a count the policy cannot take is one line naming the key."""
    from s2robot.evaluation.cli import run
    from s2robot.policies.unet1d import ConditionalUnet1D

    calls = []
    forward = ConditionalUnet1D.forward

    def counting(self, *a, **k):
        calls.append(1)
        return forward(self, *a, **k)

    cfg = compose("eval", [f"checkpoint={checkpoint}", "episodes=1", "n_envs=1", "max_steps=1", "n_videos=0",
                           f"out={tmp_path / 'e'}", "device=cpu", "num_inference_steps=5", "backend=cpu",
                           "engine=torch"])  # U-Net steps in PyTorch, where they can be counted
    monkeypatch.setattr(ConditionalUnet1D, "forward", counting)  # the policy runs here; env workers step MuJoCo
    assert run(cfg) == 0
    monkeypatch.undo()
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["policy"]["num_inference_steps"] == 5 and summary["policy_forwards"] == 1 and len(calls) == 5
    for bad in ("0", "101", "abc"):
        with pytest.raises(SystemExit, match=rf"^s2robot eval: num_inference_steps='?{bad}'?: expected an integer "
                                             r"in \[1, 100\]"):
            run(compose("eval", [f"checkpoint={checkpoint}", f"num_inference_steps={bad}", "device=cpu"]))
    with pytest.raises(SystemExit, match=r"^s2robot eval: compile_denoiser='abc': expected true or false$"):
        run(compose("eval", [f"checkpoint={checkpoint}", "compile_denoiser=abc", "device=cpu"]))


def test_eval_overrides_the_chunk_length_and_records_it(checkpoint, tmp_path):
    """``n_action_steps=K`` makes a diffusion checkpoint return K actions per chunk (its config says 8): with K = 1
    and whole chunks a 4-step episode takes 4 policy forwards, one per step, and the report says so; a K beyond
    horizon - n_obs_steps + 1 is one line naming the key."""
    from s2robot.evaluation.cli import run

    base = [f"checkpoint={checkpoint}", "episodes=1", "n_envs=1", "max_steps=4", "n_videos=0", "device=cpu",
            "temporal_ensemble=off"]
    assert run(compose("eval", base + [f"out={tmp_path / 'k1'}", "n_action_steps=1"])) == 0
    summary = json.loads((tmp_path / "k1" / "summary.json").read_text())
    assert summary["execution"] == {"replan_every": None, "temporal_ensemble": None, "n_action_steps": 1}
    assert summary["policy_forwards"] == 4
    assert run(compose("eval", base + [f"out={tmp_path / 'k8'}"])) == 0
    assert json.loads((tmp_path / "k8" / "summary.json").read_text())["policy_forwards"] == 1
    with pytest.raises(SystemExit, match=r"^s2robot eval: n_action_steps=16: expected an integer in \[1, 15\]"):
        run(compose("eval", [f"checkpoint={checkpoint}", "n_action_steps=16", "device=cpu"]))


def test_eval_picks_the_encoder_engine_and_records_it(checkpoint, tmp_path):
    """``engine=...`` chooses how the frozen encoder is computed on this machine (the checkpoint does not fix it); an
    engine the encoder cannot run, or an unknown one, is one line naming it before any episode starts."""
    from s2robot.evaluation.cli import run

    base = [f"checkpoint={checkpoint}", "episodes=1", "n_envs=1", "max_steps=1", "n_videos=0", "device=cpu"]
    assert run(compose("eval", base + [f"out={tmp_path / 'e'}", "engine=torch"])) == 0
    report = json.loads((tmp_path / "e" / "summary.json").read_text())["policy"]
    assert report["encoder_engine"] == report["denoiser_engine"] == "torch"  # the diffusion U-Net follows it too
    with pytest.raises(SystemExit, match=r"^s2robot eval: engine='fused' supports the torchvision CNN trunks"):
        run(compose("eval", base + ["engine=fused"]))  # the test checkpoint's encoder is a ViT
    with pytest.raises(SystemExit, match=r"^s2robot eval: engine='onnx' is not one of \('auto', 'torch', 'fused', "
                                         r"'openvino'\)$"):
        run(compose("eval", base + ["engine=onnx"]))
    assert not (tmp_path / "e2").exists()


def test_eval_verb_errors_are_named(tmp_path):
    from s2robot.evaluation.cli import run

    with pytest.raises(SystemExit, match="checkpoint=PATH is required"):
        run(compose("eval", []))
    with pytest.raises(SystemExit, match="checkpoint not found"):
        run(compose("eval", [f"checkpoint={tmp_path / 'nope'}"]))


def test_demo_stage_configs_carry_the_demo_choices():
    from s2robot.demo import _stage_cfg

    cfg = compose("demo", ["task.image_size=64", "stages.train.train.steps=7"])
    train = _stage_cfg(cfg, "train", ["dataset.path=/tmp/x.zarr"])
    assert train.task.name == "lift_cube" and train.task.image_size == 64
    assert train.encoder.name == "mobilenet_v2" and list(train.encoder.scales) == [1, 2]
    assert train.policy.name == "bc_mlp" and train.token_dim == cfg.token_dim == 256
    assert train.train.steps == 7 and train.dataset.path == "/tmp/x.zarr" and train.optim.lr == 3.0e-4
    cache = _stage_cfg(cfg, "cache", ["dataset.path=/tmp/x.zarr"])
    assert cache.token_dim == 256 and cache.encoder.input_size == 96  # one token_dim for both stages
    # the views the cache writes are the views training asks for (one demo key drives both)
    assert cache.augment_views == train.dataset.augment_views == cfg.augment_views == 4
    cfg1 = compose("demo", ["augment_views=1"])
    assert _stage_cfg(cfg1, "cache").augment_views == _stage_cfg(cfg1, "train").dataset.augment_views == 1
    ev = _stage_cfg(cfg, "eval", ["checkpoint=/tmp/ckpt"])
    assert ev.episodes == cfg.stages.eval.episodes and ev.checkpoint == "/tmp/ckpt"
    collect = _stage_cfg(cfg, "collect")
    assert collect.episodes == cfg.stages.collect.episodes and collect.task.image_size == 64
