"""Reads never substitute zarr fill values for written data; ``dataset verify``; the pre-training check."""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr

from s2robot.cli import main
from s2robot.datasets.feature_cache import cache_features
from s2robot.datasets.integrity import ChunkError, missing_chunks, preflight
from s2robot.datasets.sampler import SequenceDataset
from s2robot.datasets.store import DatasetError, EpisodeStore
from s2robot.datasets.verify import verify_store
from test_dataset_core import build_store, make_episode
from test_dataset_features import FakeEncoder

LENGTHS = (5, 9, 7, 12)  # 33 steps; images are chunked 4 frames per chunk


def _chunk_file(path, name: str, c: int):
    arr = EpisodeStore.open(path).group[name]
    key = arr.metadata.chunk_key_encoding.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
    return path / name / key


def _store_with_features(tmp_path):
    path = tmp_path / "d.zarr"
    build_store(path, LENGTHS)
    key = cache_features(path, FakeEncoder(), batch_size=8, device="cpu", progress=False)
    return path, key


def test_all_zero_chunks_are_still_written(tmp_path):
    """zarr skips all-fill chunks by default; a missing chunk must always mean lost data."""
    path = tmp_path / "z.zarr"
    store = EpisodeStore.create(path, attrs={"task": "t"})
    ep = make_episode(6, 0)
    ep["action"][:] = 0  # a whole chunk of zeros
    store.append_episode(ep)
    store.append_episode({k: v.copy() for k, v in ep.items()})
    assert missing_chunks(store.array("action"), store.n_steps) == []
    assert missing_chunks(store.array("success"), store.n_steps) == []
    assert EpisodeStore.open(path).attrs["chunks_always_written"] is True


@pytest.mark.parametrize("name", ["data/action", "data/front_image"])
def test_deleted_chunk_is_an_error_naming_key_chunk_and_episodes(tmp_path, name):
    path = tmp_path / "d.zarr"
    build_store(path, LENGTHS)
    c = 0 if name == "data/action" else 2  # image chunk 2 = steps 8-11: episodes 1 (5-13)
    _chunk_file(path, name, c).unlink()
    ds = SequenceDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2, split="all")
    with pytest.raises(ChunkError, match=rf"{name} chunk {c} \(steps .*episode"):
        ds.get_batch(np.arange(len(ds)))
    with pytest.raises(ChunkError, match=rf"{name} chunk {c}"):
        EpisodeStore.open(path).get_episode(1)
    with pytest.raises(ChunkError, match=rf"{name} chunk {c}"):
        preflight(path)


def test_zarr_path_reads_do_not_fill_missing_chunks(tmp_path):
    """Non-local stores (memory, zip, remote) go through zarr: a chunk absent from the listing is an error too."""
    src = tmp_path / "d.zarr"
    build_store(src, LENGTHS)
    _chunk_file(src, "data/front_image", 1).unlink()
    mem = zarr.storage.MemoryStore()
    local = zarr.open_group(str(src), mode="r")
    for key in [k for k in _all_keys(local)]:
        mem._store_dict[key] = zarr.core.buffer.cpu.Buffer.from_bytes((src / key).read_bytes())
    ds = SequenceDataset(mem, horizon=4, n_obs_steps=2, n_action_steps=2, split="all")
    with pytest.raises(ChunkError, match=r"data/front_image chunk 1 \(steps 4-7, episodes 0-1\)"):
        ds.get_batch(np.arange(len(ds)))


def _all_keys(group: zarr.Group) -> list[str]:
    root = __import__("pathlib").Path(group.store.root)
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def test_truncated_chunk_names_the_chunk(tmp_path):
    path, key = _store_with_features(tmp_path)
    f = _chunk_file(path, "data/front_image", 3)
    f.write_bytes(f.read_bytes()[:20])
    ds = SequenceDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2, split="all")
    with pytest.raises(ChunkError, match=r"data/front_image chunk 3 .*cannot be decoded"):
        ds.get_batch(np.arange(len(ds)))
    with pytest.raises(ChunkError, match=r"data/front_image chunk 3 .*cannot be decoded"):
        EpisodeStore.open(path).get_episode(1)


def test_deleted_feature_chunk_is_an_error(tmp_path):
    path, key = _store_with_features(tmp_path)
    _chunk_file(path, f"features/{key}/wrist", 10).unlink()
    ds = SequenceDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2, feature_hash=key, split="all")
    with pytest.raises(ChunkError, match=rf"features/{key}/wrist chunk 10 \(steps 10-10, episode 1\)"):
        ds.get_batch(np.arange(len(ds)))
    with pytest.raises(ChunkError, match=rf"features/{key}/wrist chunk 10"):
        preflight(path, ["action", "proprio"], feature_hash=key)


def test_cache_refuses_to_encode_missing_image_chunks(tmp_path):
    path = tmp_path / "d.zarr"
    build_store(path, LENGTHS)
    _chunk_file(path, "data/wrist_image", 1).unlink()
    with pytest.raises(ChunkError, match=r"data/wrist_image chunk 1"):
        cache_features(path, FakeEncoder(), batch_size=8, device="cpu", progress=False)


def test_preflight_rejects_nonfinite_float_keys(tmp_path):
    path = tmp_path / "d.zarr"
    store = EpisodeStore.create(path, attrs={"task": "t"})
    for i, t in enumerate(LENGTHS):
        ep = make_episode(t, i)
        if i == 2:
            ep["proprio"][3, 1] = np.nan
        store.append_episode(ep)
    with pytest.raises(DatasetError, match=r"data/proprio has 1 steps with NaN/inf .*step 17 \(episode 2\)"):
        preflight(path)
    preflight(path, ["action"])  # only the keys asked for


def test_verify_reports_every_problem_per_key_and_exits_nonzero(tmp_path, capsys):
    path, key = _store_with_features(tmp_path)
    assert main(["dataset", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "verify: ok" in out and f"features/{key}/front" in out
    assert main(["dataset", "info", str(path)]) == 0
    assert "verified: yes" in capsys.readouterr().out

    _chunk_file(path, "data/action", 0).unlink()
    f = _chunk_file(path, "data/front_image", 3)
    f.write_bytes(f.read_bytes()[:20])
    _chunk_file(path, f"features/{key}/wrist", 30).unlink()
    assert main(["dataset", "info", str(path)]) == 1
    out = capsys.readouterr().out
    assert "verified: no (changed since it was verified)" in out
    assert "PROBLEM: data/action: 1 chunk(s)" in out and f"PROBLEM: features/{key}/wrist" in out

    assert main(["dataset", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "data/action chunk 0 (steps 0-32, episodes 0-3) is missing" in out
    assert "data/front_image chunk 3 (steps 12-15, episodes 1-2) cannot be decoded" in out
    assert f"features/{key}/wrist chunk 30 (steps 30-30, episode 3) is missing" in out
    assert "verify: 3 problem(s) in 3 of" in out


def test_verify_finds_nan_and_unfinished_feature_sets(tmp_path):
    path, key = _store_with_features(tmp_path)
    g = zarr.open_group(str(path), mode="r+")
    proprio = g["data/proprio"]
    proprio[7, 0] = np.inf
    g[f"features/{key}"].attrs["progress"] = {"front": 33, "wrist": 20}
    problems = [p for r in verify_store(path) for p in r.problems]
    assert any("data/proprio has 1 steps with NaN/inf values, the first at step 7 (episode 1)" in p for p in problems)
    assert any(f"features/{key}/wrist covers 20 of 33 steps" in p for p in problems)
    assert len(problems) == 2


@pytest.mark.parametrize("name", ["data/action", "features"])
def test_train_refuses_a_store_with_missing_chunks_before_step_0(tmp_path, name):
    """The issue's run: chunk files deleted, `train` exited 0 with loss 0.0009 (all-zero actions)."""
    from omegaconf import OmegaConf

    from policy_testlib import TINY_ENCODER, make_store, train_cfg
    from s2robot.encoders import build_encoder
    from s2robot.training.train import run

    path = make_store(tmp_path / "demo.zarr")
    if name == "features":
        key = cache_features(path, build_encoder(**TINY_ENCODER), device="cpu", progress=False)
        name = f"features/{key}/front"
    _chunk_file(path, name, 0).unlink()
    with pytest.raises(SystemExit, match=rf"s2robot train: .*{name} chunk 0 \(steps 0-.*episode"):
        run(OmegaConf.create(train_cfg(path, tmp_path / "run", "bc_mlp", steps=2)))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_verify_notes_an_interrupted_episode_without_failing(tmp_path, capsys):
    path = tmp_path / "d.zarr"
    build_store(path, LENGTHS)
    g = zarr.open_group(str(path), mode="r+")
    for key in g["data"].array_keys():  # data of a 5th episode whose end was never recorded
        arr = g["data"][key]
        arr.resize((arr.shape[0] + 3, *arr.shape[1:]))
    with pytest.warns(UserWarning, match="past the last recorded episode end"):
        assert main(["dataset", "verify", str(path)]) == 0
    assert "note: data/action runs 3 steps past the last episode end" in capsys.readouterr().out


def test_a_damaged_chunk_read_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    """Truncated token chunk, read by a DataLoader worker during `s2robot train`: one line naming the chunk."""
    from policy_testlib import TINY_ENCODER, make_store
    from s2robot.encoders import build_encoder

    path = make_store(tmp_path / "demo.zarr")
    key = cache_features(path, build_encoder(**TINY_ENCODER), device="cpu", progress=False)
    for c in range(0, 80):  # damage every token chunk of front: whichever window a worker reads first hits one
        f = _chunk_file(path, f"features/{key}/front", c)
        f.write_bytes(f.read_bytes()[:40])
    argv = ["train", f"dataset={path}", "encoder=vit_tiny_test", "policy=bc_mlp", "train.steps=2",
            "train.batch_size=8", "dataset.num_workers=1", "train.val_every=0", "train.tensorboard=false",
            "train.progress=false", "optim.warmup_steps=0", f"out_dir={tmp_path / 'run'}", "device=cpu"]
    rc = main([*argv, "dataset.token_cache_mb=0"])  # streamed: the worker decodes the chunk
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 1 and len(err) == 1, err
    chunk_line = rf"s2robot train: .*features/{key}/front chunk \d+ \(steps .*\) cannot be decoded"
    assert re.match(chunk_line, err[0])
    with pytest.raises(SystemExit, match=chunk_line) as e:  # held in RAM: read before the workers start
        main(argv)
    assert "\n" not in str(e.value.code)


def test_unfinished_feature_set_hint_is_the_cache_command_that_finishes_it(tmp_path):
    import shlex

    from s2robot.cli import compose
    from s2robot.datasets.feature_cache import feature_hash_for
    from s2robot.encoders import build_encoder

    path = tmp_path / "d.zarr"
    build_store(path, LENGTHS)
    enc = build_encoder("vit_tiny_test", scales=[1])
    key = cache_features(path, enc, device="cpu", progress=False, pool_grid=2)
    g = zarr.open_group(str(path), mode="r+")
    g[f"features/{key}"].attrs["progress"] = {"front": 33, "wrist": 20}
    with pytest.raises(DatasetError, match="finish it with `s2robot cache ") as err:
        SequenceDataset(path, horizon=4, n_action_steps=2, feature_hash=key, split="all")
    argv = shlex.split(str(err.value).split("`")[1])
    cfg = compose("cache", argv[2:])
    rebuilt = build_encoder(**{k: v for k, v in dict(cfg.encoder).items()})
    assert cfg.dataset.path == str(path) and feature_hash_for(rebuilt, cfg.pool_grid) == key
    problems = [p for r in verify_store(path) for p in r.problems]
    assert any(f"rerun `s2robot cache dataset={path} encoder=vit_tiny_test encoder.scales=[1] pool_grid=2`" in p
               for p in problems), problems


def test_verification_state_of_copies_and_zip_stores(tmp_path, capsys):
    path = tmp_path / "d.zarr"
    store, _ = build_store(path, LENGTHS)
    assert main(["dataset", "verify", str(path)]) == 0
    store.export(tmp_path / "copy.zarr")
    store.export(tmp_path / "d.zip")
    capsys.readouterr()
    assert main(["dataset", "info", str(tmp_path / "copy.zarr")]) == 0
    assert "verified: no (never verified)" in capsys.readouterr().out  # the copy's own files are unverified
    assert main(["dataset", "info", str(tmp_path / "d.zip")]) == 0
    assert "verified: not recorded (only local directory stores record it)" in capsys.readouterr().out
    assert main(["dataset", "verify", str(tmp_path / "d.zip")]) == 0
