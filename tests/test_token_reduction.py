"""PCA-reduced cached tokens and the in-RAM token path: same numbers cached and online, faster batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy_testlib import CAMERAS, TINY_ENCODER, make_store, train_cfg
from s2robot.tokens import fit_pca, tokens_as_cached


def test_fit_pca_recovers_a_low_rank_subspace():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 3, generator=g))[0].T  # (3, 32) orthonormal
    x = torch.randn(2000, 3, generator=g) * torch.tensor([5.0, 3.0, 1.0]) @ basis + 7.0
    proj, explained = fit_pca(x, 3)
    assert explained > 0.999
    # the components span the generating subspace, and projecting + back-projecting reconstructs x
    recon = proj(x) @ proj.components + proj.mean
    torch.testing.assert_close(recon, x, atol=1e-3, rtol=0)
    proj2, explained2 = fit_pca(x, 1)
    assert explained2 < explained and proj2.out_dim == 1
    with pytest.raises(ValueError, match="dim"):
        fit_pca(x, 33)


def test_tokens_as_cached_rounds_projects_and_rejects_bad_dtype():
    x = torch.randn(2, 5, 8) * 3
    proj, _ = fit_pca(x.reshape(-1, 8), 4)
    out = tokens_as_cached(x, num_prefix=1, grid=2, projection=proj)
    assert out.dtype == torch.float16 and out.shape == (2, 5, 4)
    torch.testing.assert_close(out, proj(x.half().float()).half())
    with pytest.raises(ValueError, match="cache dtype"):
        tokens_as_cached(x, num_prefix=1, grid=2, dtype="int8")


@pytest.fixture(scope="module")
def reduced_store(tmp_path_factory):
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.token_reduction import reduce_features
    from s2robot.encoders import build_encoder

    path = make_store(tmp_path_factory.mktemp("reduced") / "demo.zarr")
    enc = build_encoder(**TINY_ENCODER)
    full = cache_features(path, enc, device="cpu", progress=False)
    key = reduce_features(path, full, 8, progress=False)
    return path, full, key


def test_reduced_set_is_stored_with_its_projection(reduced_store):
    import zarr

    from s2robot.datasets.token_reduction import load_projection, reduce_features

    path, full, key = reduced_store
    assert key == f"{full}_pca8"
    g = zarr.open_group(str(path), mode="r")
    src, red = g["features"][full], g["features"][key]
    proj = load_projection(red)
    assert proj.out_dim == 8 and red.attrs["reduce"]["source"] == full
    for cam in CAMERAS:
        x = torch.from_numpy(np.asarray(src[cam][:]))
        want = tokens_as_cached(x, num_prefix=0, grid=0, projection=proj).numpy()
        # float16 of a float32 matmul: the cache projects in batches, so BLAS may sum in another order and a value
        # can round to the neighbouring float16 (seen: 62 of 10880 elements, 3e-5 apart); a wrong projection is far off
        np.testing.assert_allclose(np.asarray(red[cam][:], np.float32), want.astype(np.float32), rtol=2e-3, atol=1e-4)
    assert reduce_features(path, full, 8, progress=False) == key  # complete: kept, not recomputed
    from s2robot.datasets.store import DatasetError

    with pytest.raises(DatasetError, match="token_dim must be"):
        reduce_features(path, full, 10_000, progress=False)


def test_policy_on_reduced_tokens_encodes_live_frames_like_the_cache(tmp_path, reduced_store):
    """train with token_dim -> the checkpoint holds the PCA -> online tokens of stored frames == cached tokens."""
    import zarr

    import s2robot
    from s2robot.training.train import train

    path, _, key = reduced_store
    ckpt = train(train_cfg(path, tmp_path / "run", "bc_mlp", steps=2, token_dim=8))
    policy = s2robot.load_policy(ckpt)
    assert policy.shape_meta.token_reduce["dim"] == 8 and policy.shape_meta.feature_hash == key
    g = zarr.open_group(str(path), mode="r")
    frames = torch.from_numpy(np.asarray(g["data"]["front_image"][:6]))
    online = policy.obs_conditioner.encode_images(frames)
    cached = torch.from_numpy(np.asarray(g["features"][key]["front"][:6]).astype(np.float32))
    torch.testing.assert_close(online, cached, atol=2e-3, rtol=1e-3)  # fp16 rounding of a matmul: ~1 ulp
    # the projection is the learned-nothing PCA: zeroing it changes the tokens (the test can fail)
    policy.obs_conditioner.token_proj_components.zero_()
    assert not torch.allclose(policy.obs_conditioner.encode_images(frames), cached)


def test_token_dim_without_reduced_set_is_one_clear_error(tmp_path):
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.encoders import build_encoder
    from s2robot.training.train import train

    path = make_store(tmp_path / "full.zarr")
    cache_features(path, build_encoder(**TINY_ENCODER), device="cpu", progress=False)
    with pytest.raises(ValueError, match="token_dim=8"):
        train(train_cfg(path, tmp_path / "run", "bc_mlp", steps=2, token_dim=8))


def test_tokens_in_ram_equal_streamed_tokens(reduced_store):
    from s2robot.datasets.sampler import SequenceDataset

    path, _, key = reduced_store
    kw = dict(horizon=4, n_obs_steps=2, n_action_steps=2, feature_hash=key, split="all")
    ram = SequenceDataset(path, token_cache_bytes=1 << 30, **kw)
    streamed = SequenceDataset(path, token_cache_bytes=0, **kw)
    assert ram.tokens_in_ram and not streamed.tokens_in_ram
    idx = np.arange(len(ram))[::3]
    a, b = ram.get_batch(idx), streamed.get_batch(idx)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_tokens_loaded_once_are_shared_by_forked_workers_and_the_val_split(reduced_store, monkeypatch):
    """``load_into_ram`` reads the RAM-held arrays in this process; a forked DataLoader worker uses them without
    reading the store again (copy-on-write: one copy per training), and the val split reuses the train split's."""
    import os

    from s2robot.datasets import sampler
    from s2robot.datasets.sampler import BatchView, SequenceDataset

    path, _, key = reduced_store
    kw = dict(horizon=4, n_obs_steps=2, n_action_steps=2, feature_hash=key, token_cache_bytes=1 << 30, val_ratio=0.5)
    train_ds, val_ds = SequenceDataset(path, split="train", **kw), SequenceDataset(path, split="val", **kw)
    train_ds.load_into_ram()
    val_ds.load_into_ram(share_with=train_ds)
    ram_keys = [k for k in train_ds._sources if train_ds._in_ram(k)]
    assert set(train_ds.token_keys) <= set(ram_keys) and "action" in ram_keys
    assert all(val_ds._arrays[k] is train_ds._arrays[k] for k in ram_keys)
    want = train_ds.get_batch(np.arange(8))
    parent = os.getpid()
    read_steps, reader_read = sampler.read_steps, sampler.FrameReader.read

    def only_in_parent(fn):
        def wrapped(*a, **k):
            assert os.getpid() == parent, "a forked worker read the store again"
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(sampler, "read_steps", only_in_parent(read_steps))
    monkeypatch.setattr(sampler.FrameReader, "read", only_in_parent(reader_read))
    loader = torch.utils.data.DataLoader(BatchView(train_ds), sampler=[list(range(8))], batch_size=None,
                                         num_workers=1, multiprocessing_context="fork")
    got = next(iter(loader))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def _read_set(path, key):
    import zarr

    g = zarr.open_group(str(path), mode="r")["features"][key]
    return {c: np.asarray(a[...]) for c, a in g.arrays()}, dict(g.attrs), {
        n: np.asarray(g["projection"][n][...]) for n in ("mean", "components")}


def _small_fit_sample(monkeypatch, enc, frames=30):
    """Fit the PCA on ``frames`` frames per camera (the tiny stores' 80 would all be in the default sample)."""
    from s2robot.datasets import token_reduction

    monkeypatch.setattr(token_reduction, "FIT_TOKENS", frames * enc.num_tokens * len(CAMERAS))


def test_token_dim_caches_only_the_reduced_tokens_and_they_equal_the_two_stage_ones(tmp_path, monkeypatch):
    """``cache_features(token_dim=K)`` fits the PCA on the sample frames, encoded first, and writes only the
    reduced set: the same key, attrs, projection and tokens (float16 rounding) as caching the full tokens and
    reducing them (``keep_unreduced``), without the full-width set on disk."""
    import zarr

    from s2robot.datasets.feature_cache import cache_features
    from s2robot.encoders import build_encoder

    enc = build_encoder(**TINY_ENCODER)
    _small_fit_sample(monkeypatch, enc)
    two_stage, direct = make_store(tmp_path / "two.zarr"), make_store(tmp_path / "direct.zarr")  # the same frames
    key = cache_features(two_stage, enc, device="cpu", progress=False, token_dim=8, keep_unreduced=True)
    assert cache_features(direct, enc, device="cpu", progress=False, token_dim=8) == key
    assert list(zarr.open_group(str(direct), mode="r")["features"].group_keys()) == [key]
    got, got_attrs, got_proj = _read_set(direct, key)
    want, want_attrs, want_proj = _read_set(two_stage, key)
    assert got_attrs == want_attrs and got_attrs["progress"] == {c: 80 for c in CAMERAS}
    assert got_attrs["reduce"]["fit_tokens"] == 30 * enc.num_tokens * len(CAMERAS)
    for name in got_proj:
        np.testing.assert_allclose(got_proj[name], want_proj[name], atol=1e-4)
    for cam in CAMERAS:
        assert got[cam].shape == want[cam].shape == (80, enc.num_tokens, 8)
        np.testing.assert_allclose(got[cam].astype(np.float32), want[cam].astype(np.float32), atol=2e-2)


def test_small_store_reduces_the_full_tokens_then_drops_them(tmp_path, reduced_store):
    """Where the fit sample is most of the frames, the full tokens are written, reduced (nothing encoded twice)
    and deleted: exactly the reduced set of caching and reducing by hand."""
    import zarr

    from s2robot.datasets.feature_cache import cache_features
    from s2robot.encoders import build_encoder

    path, _, key = reduced_store
    small = make_store(tmp_path / "small.zarr")
    assert cache_features(small, build_encoder(**TINY_ENCODER), device="cpu", progress=False, token_dim=8) == key
    assert list(zarr.open_group(str(small), mode="r")["features"].group_keys()) == [key]
    got, want = _read_set(small, key), _read_set(path, key)
    assert got[1] == want[1] and all(np.array_equal(got[2][n], want[2][n]) for n in got[2])
    assert all(np.array_equal(got[0][c], want[0][c]) for c in CAMERAS)


def test_a_finished_reduced_cache_is_not_encoded_again(tmp_path, monkeypatch):
    """Rerunning the cache (``make demo`` on an existing out, ``s2robot cache ... token_dim=K`` twice) on a small
    store whose full tokens were deleted after reducing: the complete reduced set is the answer, no frame encoded;
    another width has no complete set, so that one encodes."""
    from s2robot.datasets import feature_cache
    from s2robot.encoders import build_encoder

    store = make_store(tmp_path / "small.zarr")
    enc = build_encoder(**TINY_ENCODER)
    key = feature_cache.cache_features(store, enc, device="cpu", progress=False, token_dim=8)
    before = _read_set(store, key)
    monkeypatch.setattr(feature_cache, "_encode_batch", lambda *a, **k: pytest.fail("encoded again"))
    assert feature_cache.cache_features(store, enc, device="cpu", progress=False, token_dim=8) == key
    after = _read_set(store, key)
    assert after[1] == before[1] and all(np.array_equal(after[0][c], before[0][c]) for c in CAMERAS)
    with pytest.raises(BaseException, match="encoded again"):  # another width is not done: it encodes
        feature_cache.cache_features(store, enc, device="cpu", progress=False, token_dim=4)


def test_interrupted_reduced_cache_resumes_with_its_projection(tmp_path, monkeypatch):
    from s2robot.datasets import feature_cache
    from s2robot.encoders import build_encoder

    enc = build_encoder(**TINY_ENCODER)
    _small_fit_sample(monkeypatch, enc)
    ref, store = make_store(tmp_path / "ref.zarr"), make_store(tmp_path / "cut.zarr")
    key = feature_cache.cache_features(ref, enc, device="cpu", progress=False, token_dim=8, batch_size=32)
    calls, encode_batch = [], feature_cache._encode_batch

    def dies_on_the_second_write(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # the fit: 30 frames of each camera, one batch each; then 32 frames written
            raise KeyboardInterrupt
        return encode_batch(*a, **k)

    monkeypatch.setattr(feature_cache, "_encode_batch", dies_on_the_second_write)
    with pytest.raises(KeyboardInterrupt):
        feature_cache.cache_features(store, enc, device="cpu", progress=False, token_dim=8, batch_size=32)
    monkeypatch.setattr(feature_cache, "_encode_batch", encode_batch)
    _, attrs, proj = _read_set(store, key)
    assert attrs["progress"] == {CAMERAS[0]: 32}  # one batch written, nothing more claimed
    monkeypatch.setattr(feature_cache, "fit_projection", lambda *a, **k: pytest.fail("refitted on resume"))
    assert feature_cache.cache_features(store, enc, device="cpu", progress=False, token_dim=8, batch_size=32) == key
    got, attrs2, proj2 = _read_set(store, key)
    want, _, _ = _read_set(ref, key)
    assert attrs2["progress"] == {c: 80 for c in CAMERAS} and all(np.array_equal(proj[n], proj2[n]) for n in proj)
    for cam in CAMERAS:
        np.testing.assert_array_equal(got[cam], want[cam])


def test_keep_unreduced_and_cached_full_tokens_reduce_without_encoding(tmp_path, reduced_store, monkeypatch):
    import zarr

    from s2robot.cli import compose
    from s2robot.datasets import feature_cache
    from s2robot.encoders import build_encoder

    path, full, key = reduced_store
    kept = make_store(tmp_path / "kept.zarr")
    enc = build_encoder(**TINY_ENCODER)
    assert feature_cache.cache_features(kept, enc, device="cpu", progress=False, token_dim=8, keep_unreduced=True) == key
    assert sorted(zarr.open_group(str(kept), mode="r")["features"].group_keys()) == sorted([full, key])
    # the full tokens are cached: another token_dim is reduced from them, no frame encoded again
    monkeypatch.setattr(feature_cache, "_encode_batch", lambda *a, **k: pytest.fail("encoded again"))
    assert feature_cache.cache_features(kept, enc, device="cpu", progress=False, token_dim=4) == f"{full}_pca4"
    with pytest.raises(SystemExit, match=r"^s2robot cache: keep_unreduced='yes': expected true or false$"):
        feature_cache.run(compose("cache", [f"dataset={kept}", "encoder=vit_tiny_test", "keep_unreduced=yes"]))
