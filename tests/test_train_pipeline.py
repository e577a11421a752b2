"""Training pipeline: exact resume, cached features, checkpoints + load_policy, DDP with torchrun, CLI configs."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from policy_testlib import one_torch_thread  # noqa: F401  (autouse fixture)
from policy_testlib import ACTION, CAMERAS, IMG, PROPRIO, TINY_ENCODER, TINY_POLICIES, make_store, train_cfg
from s2robot.training.train import train

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data") / "demo.zarr")


@pytest.fixture(scope="module")
def cached_store(tmp_path_factory):
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.encoders import build_encoder

    path = make_store(tmp_path_factory.mktemp("cached") / "demo.zarr")
    key = cache_features(path, build_encoder(**TINY_ENCODER), device="cpu", progress=False)
    return path, key


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def test_resume_continues_exactly(tmp_path, cached_store):
    """2N steps straight == N steps, resume, N steps (weights, EMA and optimiser moments)."""
    path, _ = cached_store
    over = dict(train={"save_every": 3})  # N = 3: a checkpoint mid-run, and 3 is not a multiple of batches/epoch
    straight = train(train_cfg(path, tmp_path / "a", "diffusion_unet", steps=6, **over))
    mid = tmp_path / "a" / "checkpoints" / "step_0000003"
    assert mid.is_dir()
    # a fresh process state: resume from the step-3 checkpoint into a new run directory
    resumed = train(train_cfg(path, tmp_path / "b", "diffusion_unet", steps=6, resume=str(mid), **over))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    oa, ob = load_file(str(straight / "optimizer.safetensors")), load_file(str(resumed / "optimizer.safetensors"))
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k], atol=1e-6, rtol=0, msg=k)
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (straight, resumed))
    assert sa["step"] == sb["step"] == 6 and sa["lr_scheduler"] == sb["lr_scheduler"]
    # a third run with another seed differs (the test can fail)
    other = train(train_cfg(path, tmp_path / "c", "diffusion_unet", steps=6, seed=1, **over))
    assert any(not torch.allclose(a[k], _weights(other)[k]) for k in a if k.startswith("denoiser"))
    # resume=true in a run directory continues from its latest checkpoint; the CSV is cut back to that step
    (tmp_path / "a" / "checkpoints" / "step_0000006").rename(tmp_path / "a" / "step_6_moved")
    again = train(train_cfg(path, tmp_path / "a", "diffusion_unet", steps=6, resume=True, **over))
    for k in a:
        torch.testing.assert_close(a[k], _weights(again)[k], atol=1e-6, rtol=0, msg=k)
    with open(tmp_path / "a" / "train.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4, 6]
    # a fresh run into a run directory with checkpoints is refused; a finished run resumes to a no-op
    with pytest.raises(FileExistsError, match="resume=true"):
        train(train_cfg(path, tmp_path / "a", "diffusion_unet", steps=6, **over))
    assert train(train_cfg(path, tmp_path / "a", "diffusion_unet", steps=6, resume=True, **over)) == again


def test_cached_features_checkpoint_and_load_policy(tmp_path, cached_store, capsys):
    import s2robot

    path, key = cached_store
    ckpt = train(train_cfg(path, tmp_path / "run", "bc_mlp", steps=4, train={"val_every": 2},
                           encoder={"engine": "torch"}))
    out = capsys.readouterr().out
    assert f"using cached features {path}/features/{key}" in out
    from omegaconf import OmegaConf

    saved = OmegaConf.load(ckpt / "config.yaml")
    assert "engine" not in saved.encoder  # how this machine computed the encoder; evaluation picks its own
    assert saved.encoder.name == TINY_ENCODER["name"]
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["config.yaml", "encoder.safetensors", "model.safetensors", "optimizer.safetensors",
                     "state.json"]
    assert not list(ckpt.glob("*.pt*")) and not list(ckpt.glob("*.pkl"))
    assert (tmp_path / "run" / "val.csv").is_file()
    policy = s2robot.load_policy(ckpt)  # a run directory works too
    assert not policy.training and policy.shape_meta.feature_hash == key
    assert s2robot.load_policy(tmp_path / "run").shape_meta.feature_hash == key
    # EMA weights are what load_policy returns
    ema = {k[4:]: v for k, v in _weights(ckpt).items() if k.startswith("ema.")}
    params = dict(policy.named_parameters())
    assert ema and all(torch.equal(params[k], v) for k, v in ema.items())
    # the loaded policy acts from raw images (frozen encoder restored from encoder.safetensors) like from tokens
    from s2robot.datasets.sampler import SequenceDataset

    kw = dict(horizon=policy.horizon, n_obs_steps=2, n_action_steps=4, split="all",
              obs_keys=["front_image", "wrist_image", "proprio"])
    bi = SequenceDataset(path, **kw).get_batch([0, 7])
    bt = SequenceDataset(path, feature_hash=key, **kw).get_batch([0, 7])
    act = policy.predict_action({k: v for k, v in bi.items() if k != "action"})
    assert act.shape == (2, 4, ACTION)
    torch.testing.assert_close(act, policy.predict_action(bt), atol=1e-5, rtol=1e-5)


def test_online_encoding_when_no_cache(tmp_path, store, capsys):
    ckpt = train(train_cfg(store, tmp_path / "run", "bc_gmm", steps=2))
    assert "no cached features for encoder 'vit_tiny_test'" in capsys.readouterr().out
    from s2robot.policies.loading import read_config

    assert read_config(ckpt).shape_meta.feature_hash is None


def test_periodic_rollouts_call_the_evaluator(tmp_path, cached_store, monkeypatch):
    import s2robot.training.train as train_mod

    calls = []

    def fake_evaluate(policy, task, n_envs, episodes, seed, device, out_dir, n_videos, env_kwargs, max_steps, progress,
                      policy_info):
        assert not policy.training and task == "synthetic" and episodes == 10
        assert policy_info["trained_task"] == "synthetic" and Path(out_dir).name == f"step_{policy_info['step']:07d}"
        calls.append(out_dir)
        return {"success_rate": 0.5, "mean_max_score": 0.7, "n_episodes": episodes}

    monkeypatch.setattr(train_mod, "evaluate", fake_evaluate)
    train(train_cfg(cached_store[0], tmp_path / "run", "bc_mlp", steps=4, train={"eval_every": 2}))
    assert [Path(p).name for p in calls] == ["step_0000002", "step_0000004"]
    with open(tmp_path / "run" / "eval.csv") as f:
        assert [float(r["success_rate"]) for r in csv.DictReader(f)] == [0.5, 0.5]


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(train={"steps": 0}), "train.steps"),
        (dict(train={"stepz": 3}), "unknown key"),
        (dict(optim={"scheduler": "cosine_restarts_x"}), "optim.scheduler"),
        (dict(ema={"max_decay": 1.5}), "ema needs"),
        (dict(dataset={"path": None}), "dataset=PATH"),
        (dict(task={"name": "synthetic", "cameras": ["left"]}), r"no images for camera.*task\.cameras=\["),
        (dict(train={"batch_size": 4096}), "fewer than train.batch_size"),
        (dict(policy={"name": "x", "type": "bc", "head": "svm"}), "policy.head"),
        (dict(dataset={"pad_after": 99}), "dataset.pad_after=99 exceeds policy.horizon - policy.n_obs_steps"),
        (dict(dataset={"pad_after": -1}), "dataset.pad_after must be >= 0"),
    ],
)
def test_bad_training_config_is_a_clear_error(tmp_path, store, over, match):
    with pytest.raises(ValueError, match=match):
        train(train_cfg(store, tmp_path / "run", "bc_mlp", steps=2, **over))


def test_estimate_state_trains_on_the_store_state_and_acts_without_it(tmp_path, store, capsys):
    """``policy.obs.estimate_state``: the store's state is a training target only; the checkpoint acts from images."""
    import s2robot
    from s2robot.datasets.sampler import SequenceDataset

    with_state = make_store(tmp_path / "state.zarr", state=True)
    policy_cfg = dict(TINY_POLICIES["bc_mlp"], obs=dict(TINY_POLICIES["bc_mlp"]["obs"], estimate_state=True))
    ckpt = train(train_cfg(with_state, tmp_path / "run", steps=4, policy=policy_cfg,
                           normalizer={"state": "minmax"}))
    policy = s2robot.load_policy(ckpt)
    assert (policy.shape_meta.estimated_state_dim, policy.shape_meta.state_dim) == (2, 0)
    assert "state" not in policy.obs_keys
    batch = SequenceDataset(with_state, horizon=policy.horizon, n_obs_steps=2, n_action_steps=4, split="all",
                            obs_keys=["front_image", "wrist_image", "proprio"]).get_batch([0, 5])
    assert policy.predict_action({k: v for k, v in batch.items() if k != "action"}).shape == (2, 4, ACTION)
    from script_loader import ROOT, load_script

    report = load_script(ROOT / "scripts" / "state_estimate_error.py")
    assert report.main([str(tmp_path / "run"), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "windows of" in out and "goal entries: RMS" in out  # 2 state entries: no object block, both "rest"
    assert report.main([str(ckpt_plain := train(train_cfg(with_state, tmp_path / "plain", "bc_mlp", steps=2)))]) == 2
    assert "does not estimate the state" in capsys.readouterr().err and ckpt_plain.is_dir()
    for data, over, match in ((store, {}, "store has no 'state' key"),
                              (with_state, {"task": {"name": "synthetic", "cameras": list(CAMERAS),
                                                     "env_kwargs": {"state_obs": True}}}, "would read the state")):
        with pytest.raises(ValueError, match=match):
            train(train_cfg(data, tmp_path / "bad", steps=2, policy=policy_cfg, **over))


def test_ddp_two_processes_with_torchrun(tmp_path, cached_store):
    """torchrun --nproc_per_node 2 on CPU (gloo): both ranks train on disjoint shards and rank 0 checkpoints."""
    path, key = cached_store
    cfg = train_cfg(path, tmp_path / "run", "bc_mlp", steps=4, train={"batch_size": 4})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import json, os, sys\n"
        "from s2robot.training.train import train\n"
        "out = train(json.load(open(sys.argv[1])))\n"
        "open(os.path.join(sys.argv[2], 'rank%s.txt' % os.environ['RANK']), 'w').write(str(out))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS))
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "cfg.json"),
           str(tmp_path)]
    if not torchrun.exists():
        cmd = [sys.executable, "-m", "torch.distributed.run"] + cmd[1:]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    log = res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0, log
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000004"
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == [str(ckpt)] * 2, log
    assert "world size 2" in res.stdout, log
    state = json.loads((ckpt / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    import s2robot

    assert s2robot.load_policy(ckpt).predict_action(
        {f"{c}_image": torch.zeros(1, 2, IMG, IMG, 3, dtype=torch.uint8) for c in CAMERAS}
        | {"proprio": torch.zeros(1, 2, PROPRIO)}).shape == (1, 4, ACTION)


def test_ddp_sampler_shards_are_disjoint_and_resumable():
    from s2robot.training.train import ResumableSampler

    data = list(range(23))
    shards = [list(ResumableSampler(data, 2, r, seed=3)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 11
    s = ResumableSampler(data, 2, 0, seed=3)
    s.set_position(0, 4)
    assert list(s) == shards[0][4:] and len(s) == 7
    s.set_position(1, 0)
    assert list(s) != shards[0]


def test_cli_composes_train_config_for_every_policy():
    from s2robot.cli import compose
    from s2robot.policies.factory import parse_policy_config

    folder = Path(__file__).parents[1] / "configs" / "policy"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert {"bc_mlp", "bc_gmm", "bc_transformer", "diffusion_unet", "diffusion_transformer"} <= set(names)
    for name in names:
        cfg = compose("train", [f"policy={name}", "task=push_t", "encoder=vit_tiny_test", "dataset=/data/x.zarr",
                                "train.steps=7"])
        assert cfg.dataset.path == "/data/x.zarr" and cfg.train.steps == 7 and cfg.policy.name == name
        ptype, head, obs = parse_policy_config(cfg.policy)
        assert head.n_obs_steps >= 1 and obs.d_model >= 1
    with pytest.raises(SystemExit, match="not a known policy"):
        compose("train", ["policy=bc_svm"])


def test_cli_verb_reports_errors_without_traceback(tmp_path, store):
    from omegaconf import OmegaConf

    from s2robot.training.train import run

    cfg = train_cfg(store, tmp_path / "run", "bc_mlp", steps=2, dataset={"path": str(tmp_path / "missing.zarr")})
    with pytest.raises(SystemExit, match="s2robot train: .*missing.zarr"):
        run(OmegaConf.create(cfg))
    assert Path(run(OmegaConf.create(train_cfg(store, tmp_path / "ok", "bc_mlp", steps=2)))).is_dir()


def test_select_features_prefers_unpooled_and_honours_pool_grid(tmp_path):
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.store import EpisodeStore
    from s2robot.encoders import build_encoder
    from s2robot.training.train import select_features

    path = make_store(tmp_path / "d.zarr", episodes=2, length=8)
    enc = build_encoder(**TINY_ENCODER)
    pooled = cache_features(path, enc, pool_grid=2, device="cpu", progress=False)
    store = EpisodeStore.open(path, mode="r")
    assert select_features(store, enc, list(CAMERAS), None)[0] == pooled  # the only set
    full = cache_features(path, enc, device="cpu", progress=False)
    store = EpisodeStore.open(path, mode="r")
    assert select_features(store, enc, list(CAMERAS), None)[0] == full
    key, attrs = select_features(store, enc, list(CAMERAS), 2)
    assert key == pooled and attrs["pool_grid"] == 2
    assert select_features(store, enc, list(CAMERAS), 3) == (None, {})
    other = build_encoder(**dict(TINY_ENCODER, seed=1))  # different weights -> different hash -> no match
    assert select_features(store, other, list(CAMERAS), None) == (None, {})
    ckpt = train(train_cfg(path, tmp_path / "run", "bc_mlp", steps=2, pool_grid=2,
                           train={"batch_size": 4}))
    from s2robot.policies.loading import read_config

    meta = read_config(ckpt).shape_meta
    assert meta.feature_hash == pooled and meta.token_pool_grid == 2 and list(meta.token_shape)[0] == 1 + 4


def test_load_policy_without_the_original_encoder_file(tmp_path, store):
    """A robot computer has the checkpoint but not the encoder's .pth: weights come from encoder.safetensors and the
    encoder keeps its training-time config_hash (so cached-feature lookups still match)."""
    import s2robot
    from s2robot.encoders.vit import TINY_TEST_ARCH, _timm_vit

    pth = tmp_path / "mvp_tiny.pth"
    torch.save({"model": _timm_vit(dict(TINY_TEST_ARCH), 5).state_dict()}, pth)
    enc_cfg = {**TINY_ENCODER, "checkpoint": str(pth)}
    ckpt = train(train_cfg(store, tmp_path / "run", "bc_mlp", steps=2, encoder=enc_cfg))
    before = s2robot.load_policy(ckpt)
    pth.unlink()
    after = s2robot.load_policy(ckpt)
    assert after.obs_conditioner.token_encoder.config_hash == before.obs_conditioner.token_encoder.config_hash
    from s2robot.datasets.sampler import SequenceDataset

    batch = SequenceDataset(store, horizon=before.horizon, n_obs_steps=2, n_action_steps=4, split="all",
                            obs_keys=["front_image", "wrist_image", "proprio"]).get_batch([0, 3])
    obs = {k: v for k, v in batch.items() if k != "action"}
    torch.testing.assert_close(after.predict_action(obs), before.predict_action(obs), atol=0, rtol=0)


def test_nonfinite_loss_stops_training_keeps_good_checkpoints_and_closes_everything(tmp_path, cached_store,
                                                                                   monkeypatch):
    from s2robot.datasets.store import EpisodeStore
    from s2robot.policies.base import BasePolicy
    from s2robot.training.logger import RunLogger

    path, _ = cached_store
    calls = {"n": 0, "closed": []}
    forward = BasePolicy.forward

    def nan_from_step_4(self, batch):
        calls["n"] += 1
        loss = forward(self, batch)
        return loss * float("nan") if calls["n"] >= 4 else loss

    for cls, name in ((EpisodeStore, "store"), (RunLogger, "logger")):
        close = cls.close
        monkeypatch.setattr(cls, "close", lambda self, close=close, name=name: (calls["closed"].append(name),
                                                                                close(self))[1])
    monkeypatch.setattr(BasePolicy, "forward", nan_from_step_4)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="non-finite training loss between steps 4 and 4"):
        train(train_cfg(path, out, "bc_mlp", steps=8, train={"save_every": 3}))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003"]
    assert "store" in calls["closed"] and "logger" in calls["closed"]
    w = _weights(out / "checkpoints" / "step_0000003")
    assert all(torch.isfinite(v).all() for v in w.values())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_online_tokens_are_the_cache_function_for_every_dtype(dtype):
    """The online path (ObsConditioner.encode_images) is tokens_as_cached of the encoder's tokens in its cache_dtype,
    the function the cache writes with (for float16, the cache's dtype, the stored tokens equal it: see
    test_cached_features_checkpoint_and_load_policy)."""
    from s2robot.encoders import build_encoder
    from s2robot.policies.base import ShapeMeta
    from s2robot.policies.conditioning import ConditioningConfig, ObsConditioner
    from s2robot.tokens import CACHE_DTYPES, tokens_as_cached

    assert dtype in CACHE_DTYPES
    enc = build_encoder(**TINY_ENCODER)
    meta = ShapeMeta(cameras=["front"], proprio_dim=0, action_dim=2, image_shape=[IMG, IMG, 3],
                     token_shape=[enc.num_tokens, enc.out_dim], num_prefix=enc.num_prefix)
    cond = ObsConditioner(ConditioningConfig(backbone="tokens", cache_dtype=dtype), meta, enc)
    frames = torch.randint(0, 256, (3, IMG, IMG, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tokens_as_cached(enc.encode(frames), num_prefix=enc.num_prefix, grid=enc.grid, dtype=dtype)
        got = cond.encode_images(frames)
    assert expected.dtype == getattr(torch, dtype)
    torch.testing.assert_close(got, expected.float(), atol=0, rtol=0)


def test_training_on_cached_tokens_refuses_another_cache_dtype(tmp_path, cached_store):
    """The cache stores float16: a policy rounding live frames to another dtype would not see its training tokens."""
    path, _ = cached_store
    policy = copy.deepcopy(TINY_POLICIES["bc_mlp"])
    policy["obs"] = {**policy["obs"], "cache_dtype": "float32"}
    with pytest.raises(ValueError, match=r"policy.obs.cache_dtype=float32 but the cached features are float16"):
        train(train_cfg(path, tmp_path / "run", "bc_mlp", steps=2, policy=policy))
    # online encoding in that dtype is fine
    train(train_cfg(path, tmp_path / "run2", "bc_mlp", steps=2, policy=policy, dataset={"use_cached_features": False}))
