"""Augmented views in the frozen-feature cache (issue 12): seeded shifted views per frame, their feature key, one view
per training window (view 0 for validation), PCA on top, and one-line errors for bad values or a missing set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2robot.datasets.feature_cache import cache_features, feature_hash_for
from s2robot.datasets.sampler import BatchView, SequenceDataset, draw_views
from s2robot.datasets.store import DatasetError, EpisodeStore
from s2robot.datasets.view_augment import DEFAULT_SHIFT, AugmentSpec, augment_spec, shifted_views, view_offsets
from test_dataset_core import build_store
from test_dataset_features import FakeEncoder


class PixelEncoder(FakeEncoder):
    """Tokens that depend on where pixels are (a shift changes them), unlike FakeEncoder's frame mean."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        x = images.float().mean(dim=3) / 255.0  # (B, H, W)
        h = x.shape[1]
        ramp = torch.linspace(0, 1, h)
        rows, cols = (x * ramp[None, :, None]).sum((1, 2)), (x * ramp[None, None, :]).sum((1, 2))
        pos = torch.arange(self.num_tokens * self.out_dim, dtype=torch.float32).reshape(self.num_tokens, self.out_dim)
        return rows[:, None, None] + cols[:, None, None] * pos[None] / 50.0


def _tokens(path, key, cam="front") -> np.ndarray:
    return np.asarray(EpisodeStore.open(path).group[f"features/{key}/{cam}"][:])


def test_shifted_views_pad_replicate_and_crop():
    img = np.arange(2 * 5 * 6 * 3, dtype=np.uint8).reshape(2, 5, 6, 3)
    offsets = np.array([[[2, 2], [0, 4]], [[4, 1], [2, 2]]])  # shift 2: (2, 2) is the frame itself
    out = shifted_views(img, offsets, 2)
    assert out.shape == (4, 5, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], img[0])
    np.testing.assert_array_equal(out[3], img[1])
    # (dy, dx) = (0, 4): content moves down 2 and left 2; the top rows replicate row 0, the right cols the last col
    np.testing.assert_array_equal(out[1][2:, :4], img[0][:3, 2:])
    np.testing.assert_array_equal(out[1][:2, :4], np.broadcast_to(img[0][0, 2:], (2, 4, 3)))
    np.testing.assert_array_equal(out[1][2:, 4:], np.broadcast_to(img[0][:3, 5:], (3, 2, 3)))
    np.testing.assert_array_equal(out[2][:3], img[1][2:, np.r_[0, 0:5]])


def test_offsets_are_a_function_of_seed_and_frame_only():
    spec = AugmentSpec(4, shift=3, seed=7)
    a = view_offsets(spec, np.arange(10, 20))
    np.testing.assert_array_equal(a, np.concatenate([view_offsets(spec, np.arange(10, 15)),
                                                     view_offsets(spec, np.arange(15, 20))]))
    assert (a[:, 0] == 3).all() and a.min() >= 0 and a.max() <= 6
    assert len({tuple(o) for o in a[:, 1:].reshape(-1, 2).tolist()}) > 5  # random shifts, not one
    assert not np.array_equal(a, view_offsets(AugmentSpec(4, shift=3, seed=8), np.arange(10, 20)))


def test_views_are_deterministic_resumable_and_view0_is_the_plain_cache(tmp_path, monkeypatch):
    path, other = tmp_path / "a.zarr", tmp_path / "b.zarr"
    build_store(path)  # 33 steps
    build_store(other)
    plain = cache_features(path, PixelEncoder(), device="cpu", progress=False)
    key = cache_features(path, PixelEncoder(), batch_size=9, augment_views=3, device="cpu", progress=False)
    assert key == f"{plain}_aug3sh{DEFAULT_SHIFT}sd0"
    # the second store: interrupted after 2 encoder calls, then resumed with another batch size
    with pytest.raises(KeyboardInterrupt):
        cache_features(other, PixelEncoder(fail_after=2), batch_size=6, augment_views=3, device="cpu", progress=False)
    assert EpisodeStore.open(other).group[f"features/{key}"].attrs["progress"] == {"front": 4}  # 2 calls x 6 // 3
    assert cache_features(other, PixelEncoder(), batch_size=12, augment_views=3, device="cpu", progress=False) == key
    for cam in ("front", "wrist"):
        views, base = _tokens(path, key, cam), _tokens(path, plain, cam)
        assert views.shape == (33, 3, *base.shape[1:]) and views.dtype == np.float16
        np.testing.assert_array_equal(views, _tokens(other, key, cam))  # same views after a resume
        np.testing.assert_allclose(views[:, 0].astype(np.float32), base.astype(np.float32), rtol=1e-3, atol=1e-3)
        differs = (views[:, 1:] != views[:, :1]).any(axis=(2, 3))  # (T, K-1)
        assert differs.mean() > 0.8
    attrs = EpisodeStore.open(path).group[f"features/{key}"].attrs
    assert attrs["augment"] == {"views": 3, "shift": DEFAULT_SHIFT, "seed": 0}
    # PCA on top: fitted once, on view 0, so it is the plain set's projection (K = 1 vs K > 1 differ only in views)
    from s2robot.datasets.token_reduction import load_projection, reduce_features

    group = EpisodeStore.open(path).group["features"]
    p_aug = load_projection(group[reduce_features(path, key, 3, progress=False)])
    p_plain = load_projection(group[reduce_features(path, plain, 3, progress=False)])
    torch.testing.assert_close(p_aug.components, p_plain.components, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(p_aug.mean, p_plain.mean, atol=1e-4, rtol=1e-3)
    from s2robot.datasets.verify import verify_store

    assert not [r for r in verify_store(path, record=False) if r.problems]
    from s2robot.datasets.cli import summary

    assert f"{key}: encoder=fake" in summary(path) and f"views=3 (shift {DEFAULT_SHIFT} px, seed 0)" in summary(path)


def test_key_records_views_shift_and_seed_and_k1_is_todays_cache(tmp_path):
    enc = FakeEncoder()
    keys = {feature_hash_for(enc, None, augment_spec(k, s, r)) for k, s, r in
            [(2, 4, 0), (3, 4, 0), (2, 2, 0), (2, 4, 1)]}
    assert len(keys) == 4 and all(k.startswith(enc.config_hash + "_aug") for k in keys)
    assert feature_hash_for(enc, 2, augment_spec(2, 4, 0)) == f"{enc.config_hash}_pool2_aug2sh4sd0"
    assert augment_spec(1) is None and augment_spec(None) is None
    path = tmp_path / "d.zarr"
    build_store(path, lengths=(4, 5))
    assert cache_features(path, enc, augment_views=1, device="cpu", progress=False) == enc.config_hash
    g = EpisodeStore.open(path).group["features"]
    assert list(g.group_keys()) == [enc.config_hash] and "augment" not in g[enc.config_hash].attrs
    assert g[enc.config_hash]["front"].shape == (9, enc.num_tokens, enc.out_dim)


@pytest.fixture(scope="module")
def aug_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug") / "d.zarr"
    build_store(path)
    key = cache_features(path, PixelEncoder(), augment_views=4, device="cpu", progress=False)
    return path, key


def test_sampler_reads_the_chosen_view_in_ram_and_streamed(aug_store):
    path, key = aug_store
    kw = dict(horizon=4, n_obs_steps=2, n_action_steps=2, feature_hash=key, split="all")
    ram, streamed = SequenceDataset(path, token_cache_bytes=1 << 30, **kw), SequenceDataset(path, token_cache_bytes=0, **kw)
    assert ram.tokens_in_ram and not streamed.tokens_in_ram and ram.augment_views == 4
    assert ram.shapes["front_tokens"] == (17, 6) and ram.token_keys == ["front_tokens", "wrist_tokens"]
    idx = np.arange(len(ram))[::2]
    views = np.random.default_rng(0).integers(0, 4, size=(len(idx), 2))
    a, b = ram.get_batch(idx, views), streamed.get_batch(idx, views)
    stored = {c: _tokens(path, key, c) for c in ("front", "wrist")}
    for j, cam in enumerate(("front", "wrist")):
        torch.testing.assert_close(a[f"{cam}_tokens"], b[f"{cam}_tokens"], rtol=0, atol=0)
        frames = ram.windows[idx, 0:1] + np.clip(ram.windows[idx, 2:3] + np.arange(2), 0, ram.windows[idx, 1:2] - 1)
        want = stored[cam][frames, views[:, j:j + 1]].astype(np.float32)  # one view for the whole window
        np.testing.assert_array_equal(a[f"{cam}_tokens"].numpy(), want)
        # no views given (validation): view 0
        np.testing.assert_array_equal(ram.get_batch(idx)[f"{cam}_tokens"].numpy(),
                                      stored[cam][frames, 0].astype(np.float32))
    with pytest.raises(IndexError, match="view index"):
        ram.get_batch(idx[:1], np.array([[4, 0]]))


def test_training_sampler_draws_several_views_reproducibly(aug_store):
    from s2robot.training.train import ResumableSampler

    path, key = aug_store
    ds = SequenceDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2, feature_hash=key, split="train")
    sampler = ResumableSampler(ds, 1, 0, seed=3, views=ds.augment_views, cameras=len(ds.token_keys))
    sampler.set_position(1, 0)
    rows = list(sampler)
    assert all(len(r) == 3 for r in rows) and sorted(r[0] for r in rows) == list(range(len(ds)))
    assert {v for r in rows for v in r[1:]} == {0, 1, 2, 3}
    sampler.set_position(1, 5)  # resume inside the epoch: the same rows from there on
    assert list(sampler) == rows[5:]
    sampler.set_position(2, 0)
    assert [r[1:] for r in sampler] != [r[1:] for r in rows]  # a new epoch draws new views
    np.testing.assert_array_equal(draw_views(3, 1, 0, 7, 4, 2), draw_views(3, 1, 0, 7, 4, 2))
    batch = BatchView(ds)[rows[:6]]
    want = ds.get_batch([r[0] for r in rows[:6]], views=np.array([r[1:] for r in rows[:6]]))
    for k in batch:
        torch.testing.assert_close(batch[k], want[k], rtol=0, atol=0)


def test_train_uses_views_and_validation_view0_with_pca(tmp_path, monkeypatch):
    """cache token_dim=8 augment_views=2 (CLI) -> train with dataset.augment_views=2: training batches carry views,
    validation none; the PCA (fitted once, on view 0) is the policy's, so live frames give cached view 0."""
    import zarr

    import s2robot
    from policy_testlib import TINY_ENCODER, make_store, train_cfg
    from s2robot.cli import main
    from s2robot.datasets.token_reduction import load_projection
    from s2robot.encoders import build_encoder
    from s2robot.training.train import train
    from s2robot.tokens import tokens_as_cached

    path = make_store(tmp_path / "d.zarr")
    views = ["encoder=vit_tiny_test", "token_dim=8", "augment_views=2", "augment_shift=3", "batch_size=16"]
    assert main(["cache", f"dataset={path}", "keep_unreduced=true", *views]) == 0
    base = build_encoder(**TINY_ENCODER).config_hash
    key = f"{base}_aug2sh3sd0_pca8"
    g = zarr.open_group(str(path), mode="r")["features"]
    src, red = g[f"{base}_aug2sh3sd0"], g[key]
    proj = load_projection(red)
    assert red.attrs["augment"] == {"views": 2, "shift": 3, "seed": 0} and red["front"].shape[:2] == (80, 2)
    for v in range(2):  # one projection applied to every view
        want = tokens_as_cached(torch.from_numpy(np.asarray(src["front"][:, v])), num_prefix=0, grid=0,
                                projection=proj)
        np.testing.assert_allclose(np.asarray(red["front"][:, v], np.float32), want.numpy().astype(np.float32),
                                   rtol=2e-3, atol=1e-4)  # float16 rounding of batched matmuls (test_token_reduction)
    direct = make_store(tmp_path / "direct.zarr")  # the same frames; only the reduced views are kept
    assert main(["cache", f"dataset={direct}", *views]) == 0
    assert list(zarr.open_group(str(direct), mode="r")["features"].group_keys()) == [key]
    np.testing.assert_allclose(np.asarray(zarr.open_group(str(direct), mode="r")["features"][key]["front"], np.float32),
                               np.asarray(red["front"], np.float32), atol=2e-2)

    calls = []
    orig = SequenceDataset.get_batch
    monkeypatch.setattr(SequenceDataset, "get_batch",
                        lambda self, idx, views=None: (calls.append((self.split, views)), orig(self, idx, views))[1])
    cfg = train_cfg(path, tmp_path / "run", "bc_mlp", steps=4, token_dim=8,
                    dataset={"augment_views": 2, "augment_shift": 3})
    cfg["train"]["val_every"] = 2
    policy = s2robot.load_policy(train(cfg))
    assert policy.shape_meta.feature_hash == key
    train_views = np.concatenate([v.reshape(-1) for s, v in calls if s == "train"])
    assert {s for s, _ in calls} == {"train", "val"} and set(train_views.tolist()) == {0, 1}
    assert all(v is None for s, v in calls if s == "val")
    frames = torch.from_numpy(np.asarray(zarr.open_group(str(path), mode="r")["data"]["front_image"][:6]))
    cached = torch.from_numpy(np.asarray(red["front"][:6, 0]).astype(np.float32))
    torch.testing.assert_close(policy.obs_conditioner.encode_images(frames), cached, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("bad, match", [
    (dict(augment_views=0), "augment_views must be an integer >= 1"),
    (dict(augment_views=2, augment_shift=-1), "augment_shift must be an integer >= 1"),
    (dict(augment_views=2, augment_seed=-3), "augment_seed must be an integer >= 0"),
])
def test_bad_augment_values_are_one_clear_error(tmp_path, bad, match):
    from s2robot.training.train import DatasetConfig

    path = tmp_path / "d.zarr"
    build_store(path, lengths=(4,))
    with pytest.raises(ValueError, match=match):
        cache_features(path, FakeEncoder(), device="cpu", progress=False, **bad)
    with pytest.raises(ValueError, match="dataset." + match):
        DatasetConfig(**bad)


def test_cli_bad_value_and_missing_augmented_cache_are_one_line(tmp_path, capsys):
    from policy_testlib import make_store, train_cfg
    from s2robot.cli import main
    from s2robot.encoders import build_encoder
    from s2robot.training.train import train
    from policy_testlib import TINY_ENCODER

    path = make_store(tmp_path / "d.zarr", episodes=2, length=8)
    assert main(["cache", f"dataset={path}", "encoder=vit_tiny_test", "augment_views=0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "augment_views must be an integer >= 1" in err[0]
    cache_features(path, build_encoder(**TINY_ENCODER), device="cpu", progress=False)  # the plain set only
    with pytest.raises(ValueError, match=r"no complete cached features with 2 augmented views .*`s2robot cache "
                                         r".* augment_views=2 augment_shift=4 augment_seed=0`") as e:
        train(train_cfg(path, tmp_path / "run", "bc_mlp", steps=2, dataset={"augment_views": 2}))
    assert "\n" not in str(e.value)


def test_half_written_augmented_cache_is_not_used(tmp_path):
    from s2robot.training.train import select_features

    path = tmp_path / "d.zarr"
    build_store(path)
    with pytest.raises(KeyboardInterrupt):
        cache_features(path, FakeEncoder(fail_after=2), batch_size=8, augment_views=2, device="cpu", progress=False)
    spec = augment_spec(2)
    store = EpisodeStore.open(path)
    assert select_features(store, FakeEncoder(), ["front"], None, None, spec) == (None, {})
    key = feature_hash_for(FakeEncoder(), None, spec)
    with pytest.raises(DatasetError, match=r"covers 8 of 33 steps.*augment_views=2 augment_shift=4 augment_seed=0"):
        SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1, feature_hash=key)
    cache_features(path, FakeEncoder(), batch_size=8, augment_views=2, device="cpu", progress=False)
    store = EpisodeStore.open(path)
    assert select_features(store, FakeEncoder(), ["front", "wrist"], None, None, spec)[0] == key
    assert select_features(store, FakeEncoder(), ["front", "wrist"], None, None, None) == (None, {})
