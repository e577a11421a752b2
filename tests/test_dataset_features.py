"""Frozen-feature cache: keys, pooling, resume after interruption, stale-config protection, sampler tokens."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from s2robot.datasets.feature_cache import cache_features, feature_hash_for, pool_tokens
from s2robot.datasets.sampler import SequenceDataset
from s2robot.datasets.store import DatasetError, EpisodeStore
from test_dataset_core import build_store, make_episode


class FakeEncoder:
    """Deterministic stand-in with the encoder attributes: tokens are functions of the pixels."""

    def __init__(self, dim: int = 6, grid: int = 4, scale: float = 1.0, fail_after: int | None = None):
        self.out_dim, self.grid, self.num_prefix = dim, grid, 1
        self.num_tokens = 1 + grid * grid
        self.config = {"name": "fake", "scale": scale, "dim": dim}
        self.config_hash = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]
        self.calls, self.fail_after = 0, fail_after

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        x = images.float().mean(dim=(1, 2, 3))  # (B,)
        pos = torch.arange(self.num_tokens * self.out_dim, dtype=torch.float32).reshape(self.num_tokens, self.out_dim)
        return self.config["scale"] * (x[:, None, None] / 255.0 + pos[None] / 100.0)


def expected_tokens(enc: FakeEncoder, images: np.ndarray) -> np.ndarray:
    return enc.encode(torch.from_numpy(images)).half().numpy()


def test_cache_roundtrip_and_sampler_tokens(tmp_path):
    path = tmp_path / "d.zarr"
    _, eps = build_store(path)
    enc = FakeEncoder()
    key = cache_features(path, enc, batch_size=7, device="cpu", progress=False)
    assert key == feature_hash_for(enc) == enc.config_hash
    store = EpisodeStore.open(path)
    feats = store.group[f"features/{key}"]
    assert feats.attrs["encoder_config"] == enc.config
    allimg = np.concatenate([e["front_image"] for e in eps])
    np.testing.assert_array_equal(np.asarray(feats["front"][:]), expected_tokens(FakeEncoder(), allimg))
    assert feats["front"].dtype == np.float16

    ds = SequenceDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2, feature_hash=key, split="all")
    assert ds.obs_keys == ["front_tokens", "proprio", "wrist_tokens"]
    item = ds[5]
    assert item["front_tokens"].shape == (2, enc.num_tokens, enc.out_dim) and item["front_tokens"].dtype == torch.float32
    frames = ds.windows[5, 0] + np.clip(ds.windows[5, 2] + np.arange(2), 0, ds.windows[5, 1] - 1)
    np.testing.assert_array_equal(item["front_tokens"].numpy(), np.asarray(feats["front"][:])[frames].astype(np.float32))


def test_changed_encoder_config_never_reuses_features(tmp_path):
    path = tmp_path / "d.zarr"
    build_store(path, lengths=(4, 5))
    k1 = cache_features(path, FakeEncoder(scale=1.0), device="cpu", progress=False)
    other = FakeEncoder(scale=2.0)
    k2 = cache_features(path, other, device="cpu", progress=False)
    assert k1 != k2 and other.calls > 0  # recomputed under a new key
    g = EpisodeStore.open(path).group
    assert not np.array_equal(np.asarray(g[f"features/{k1}/front"][:]), np.asarray(g[f"features/{k2}/front"][:]))
    # a group whose recorded config differs from the encoder claiming its hash is refused
    liar = FakeEncoder(scale=3.0)
    liar.config_hash = k1
    with pytest.raises(DatasetError, match="different encoder setup"):
        cache_features(path, liar, device="cpu", progress=False)
    with pytest.raises(DatasetError, match="no cached features"):
        SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1, feature_hash="deadbeef")


def test_cache_resumes_after_interruption_and_extends(tmp_path, monkeypatch):
    path = tmp_path / "d.zarr"
    _, eps = build_store(path)  # 33 steps, 2 cameras
    closed = []
    close = EpisodeStore.close
    monkeypatch.setattr(EpisodeStore, "close", lambda self: (closed.append(self.path), close(self))[1])
    with pytest.raises(KeyboardInterrupt):
        cache_features(path, FakeEncoder(fail_after=3), batch_size=8, device="cpu", progress=False)
    assert closed, "the interrupted cache run did not release its store"
    monkeypatch.undo()
    key = FakeEncoder().config_hash
    prog = EpisodeStore.open(path).group[f"features/{key}"].attrs["progress"]
    assert prog == {"front": 24}  # three batches of 8 done before the interruption
    with pytest.raises(DatasetError, match="covers 24 of 33 steps"):
        SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1, feature_hash=key)
    enc = FakeEncoder()
    cache_features(path, enc, batch_size=8, device="cpu", progress=False)
    assert enc.calls == 2 + 5  # front: 24..33 (2 batches), wrist: 0..33 (5 batches)
    ref = FakeEncoder()
    g = EpisodeStore.open(path).group[f"features/{key}"]
    for cam in ("front", "wrist"):
        allimg = np.concatenate([e[f"{cam}_image"] for e in eps])
        np.testing.assert_array_equal(np.asarray(g[cam][:]), expected_tokens(ref, allimg))
    # episodes appended later: a rerun encodes only the new frames
    store = EpisodeStore.open(path, mode="a")
    store.append_episode(make_episode(6, 11))
    with pytest.raises(DatasetError, match="covers 33 of 39"):
        SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1, feature_hash=key)
    enc = FakeEncoder()
    cache_features(path, enc, batch_size=8, device="cpu", progress=False)
    assert enc.calls == 2
    SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1, feature_hash=key)


def test_pooled_features_keep_prefix_and_area_mean(tmp_path):
    tokens = torch.randn(3, 1 + 16, 5)
    pooled = pool_tokens(tokens, num_prefix=1, grid=4, pool_grid=2)
    assert pooled.shape == (3, 1 + 4, 5)
    torch.testing.assert_close(pooled[:, 0], tokens[:, 0])
    grid = tokens[:, 1:].reshape(3, 4, 4, 5)
    torch.testing.assert_close(pooled[:, 1], grid[:, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[:, 4], grid[:, 2:, 2:].mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="pool_grid"):
        pool_tokens(tokens, 1, 4, 5)
    path = tmp_path / "d.zarr"
    build_store(path, lengths=(4,))
    enc = FakeEncoder()
    key = cache_features(path, enc, pool_grid=2, device="cpu", progress=False)
    assert key == f"{enc.config_hash}_pool2"
    g = EpisodeStore.open(path).group[f"features/{key}"]
    assert g["front"].shape == (4, 5, 6) and g.attrs["pool_grid"] == 2
    # pool_grid equal to the encoder grid is no pooling: the unpooled features, reusable either way
    full = cache_features(path, enc, device="cpu", progress=False)
    assert cache_features(path, enc, pool_grid=enc.grid, device="cpu", progress=False) == full == enc.config_hash


def test_cache_with_real_test_encoder_and_cli(tmp_path):
    from s2robot.cli import main
    from s2robot.encoders import build_encoder

    path = tmp_path / "d.zarr"
    build_store(path, lengths=(3, 4))
    enc = build_encoder("vit_tiny_test")
    assert main(["cache", f"dataset={path}", "encoder=vit_tiny_test", "batch_size=4"]) == 0
    g = EpisodeStore.open(path).group[f"features/{enc.config_hash}"]
    imgs = np.asarray(EpisodeStore.open(path).array("front_image")[:])
    want = enc.encode(torch.from_numpy(imgs)).half().numpy()
    np.testing.assert_allclose(np.asarray(g["front"][:]).astype(np.float32), want.astype(np.float32), atol=1e-2)
