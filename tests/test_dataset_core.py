"""EpisodeStore basics, SequenceDataset windows and Normalizer (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from s2robot.policies.normalizer import Normalizer
from s2robot.datasets.sampler import SequenceDataset, make_loader, window_frames, window_index
from s2robot.datasets.store import DatasetError, EpisodeStore

ATTRS = {"task": "toy", "env_kwargs": {}, "fps": 10, "cameras": ["front", "wrist"], "action_space": {"dim": 2}}


def make_episode(t: int, seed: int, hw: int = 8) -> dict[str, np.ndarray]:
    """Deterministic episode whose values encode (seed, step) so windows can be checked exactly."""
    rng = np.random.default_rng(seed)
    steps = np.arange(t, dtype=np.float32)
    return {
        "front_image": rng.integers(0, 255, (t, hw, hw, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 255, (t, hw, hw, 3), dtype=np.uint8),
        "proprio": np.stack([steps, np.full(t, seed, np.float32), rng.normal(size=t).astype(np.float32)], 1),
        "action": np.stack([steps + 1000 * seed, -steps], 1).astype(np.float32),
        "reward": rng.random(t).astype(np.float32),
        "success": (steps == t - 1),
    }


def build_store(path, lengths=(5, 9, 7, 12), **kw) -> tuple[EpisodeStore, list[dict]]:
    store = EpisodeStore.create(path, attrs=ATTRS, **kw)
    eps = [make_episode(t, i) for i, t in enumerate(lengths)]
    for ep in eps:
        store.append_episode(ep)
    return store, eps


@pytest.mark.parametrize("kind", ["dir", "memory", "fsspec", "zip"])
def test_store_roundtrip_all_backends(tmp_path, kind):
    if kind in ("dir", "zip"):
        path = tmp_path / "d.zarr"
    elif kind == "memory":
        path = zarr.storage.MemoryStore()
    else:
        path = f"memory://s2robot-test-{tmp_path.name}"
    store, eps = build_store(path)
    if kind == "zip":
        store.export(tmp_path / "d.zip")
        path = tmp_path / "d.zip"
    with EpisodeStore.open(path) as st:
        assert st.n_episodes == 4 and st.n_steps == sum(len(e["action"]) for e in eps)
        np.testing.assert_array_equal(st.episode_ends, np.cumsum([5, 9, 7, 12]))
        assert st.keys == sorted(eps[0])
        assert st.attrs["task"] == "toy" and st.attrs["format_version"] == 1
        assert st.spec["front_image"] == {"shape": [8, 8, 3], "dtype": "uint8"}
        for i, ep in enumerate(eps):
            got = st.get_episode(i)
            for k, v in ep.items():
                np.testing.assert_array_equal(got[k], v)
                assert got[k].dtype == v.dtype


def test_zip_is_write_once(tmp_path):
    with pytest.raises(DatasetError, match="write-once"):
        EpisodeStore.create(tmp_path / "x.zip")
    build_store(tmp_path / "d.zarr")[0].export(tmp_path / "d.zip")
    with pytest.raises(DatasetError, match="write-once"):
        EpisodeStore.open(tmp_path / "d.zip", mode="a")


def test_append_rejects_mismatched_episodes(tmp_path):
    store, _ = build_store(tmp_path / "d.zarr", lengths=(4,))
    ep = make_episode(3, 9)
    with pytest.raises(DatasetError, match="keys differ"):
        store.append_episode({k: v for k, v in ep.items() if k != "reward"})
    with pytest.raises(DatasetError, match="per-step shape"):
        store.append_episode({**ep, "proprio": np.zeros((3, 5), np.float32)})
    with pytest.raises(DatasetError, match="one length"):
        store.append_episode({**ep, "action": np.zeros((2, 2), np.float32)})
    with pytest.raises(DatasetError, match="dtype"):
        store.append_episode({**ep, "front_image": ep["front_image"].astype(np.float32)})
    assert store.n_episodes == 1
    with pytest.raises(DatasetError, match="read-only"):
        EpisodeStore.open(tmp_path / "d.zarr").append_episode(ep)
    reopened = EpisodeStore.open(tmp_path / "d.zarr", mode="a")
    reopened.append_episode(ep)
    assert EpisodeStore.open(tmp_path / "d.zarr").n_episodes == 2
    with pytest.raises(FileExistsError):
        EpisodeStore.create(tmp_path / "d.zarr")


def test_window_index_vectorised_matches_reference():
    lengths = np.array([5, 1, 9, 3])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    horizon, pb, pa = 6, 1, 3
    win = window_index(starts, lengths, horizon, pb, pa)
    ref = [(s, L, r) for s, L in zip(starts, lengths) for r in range(-pb, L - horizon + pa + 1)]
    np.testing.assert_array_equal(win, np.array(ref).reshape(-1, 3))
    frames = window_frames(win, horizon)
    for (s, L, r), f in zip(win, frames):
        np.testing.assert_array_equal(f, s + np.clip(np.arange(r, r + horizon), 0, L - 1))


def test_pad_after_makes_every_frame_a_current_observation(tmp_path):
    """The default pad_after = horizon - n_obs_steps conditions on every frame, the last ones with the final action
    repeated; Diffusion Policy's n_action_steps - 1 never conditions on an episode's last frames (where a stacking
    demo releases the cube)."""
    _, eps = build_store(tmp_path / "d.zarr")
    lengths = [len(e["action"]) for e in eps]
    kw = dict(horizon=6, n_obs_steps=2, n_action_steps=2, obs_keys=["proprio"], split="all")
    full = SequenceDataset(tmp_path / "d.zarr", **kw)
    assert full.pad_after == 4
    dp_rule = SequenceDataset(tmp_path / "d.zarr", pad_after=1, **kw)

    def current_steps(ds):  # (episode, step) of each window's last observation
        rows = ds.get_batch(list(range(len(ds))))["proprio"][:, -1].numpy()
        return {(int(r[1]), int(r[0])) for r in rows}  # proprio = (step, episode seed, noise)

    everything = {(e, t) for e, L in enumerate(lengths) for t in range(L)}
    assert current_steps(full) == everything
    missing = everything - current_steps(dp_rule)
    assert missing == {(e, t) for e, L in enumerate(lengths) for t in range(L - 3, L)}  # horizon - n_obs - n_act + 1
    last = full[len(full) - 1]
    np.testing.assert_array_equal(last["action"][:, 0].numpy() - 3000, [10, 11, 11, 11, 11, 11])
    with pytest.raises(ValueError, match="pad_after=5"):
        SequenceDataset(tmp_path / "d.zarr", pad_after=5, **kw)


def test_sequence_dataset_windows_and_padding(tmp_path):
    _, eps = build_store(tmp_path / "d.zarr")
    ds = SequenceDataset(tmp_path / "d.zarr", horizon=6, n_obs_steps=2, n_action_steps=4, split="all")
    assert ds.pad_after == 4  # horizon - n_obs_steps
    assert ds.obs_keys == ["front_image", "proprio", "wrist_image"]
    # windows per episode: L - horizon + pad_before + pad_after + 1
    assert len(ds) == sum(max(0, t - 6 + 1 + 4 + 1) for t in (5, 9, 7, 12))
    item = ds[0]  # first window of episode 0 starts at -1: edge-padded with frame 0
    assert item["front_image"].shape == (2, 8, 8, 3) and item["front_image"].dtype == torch.uint8
    assert item["proprio"].shape == (2, 3) and item["action"].shape == (6, 2)
    np.testing.assert_array_equal(item["front_image"][0], eps[0]["front_image"][0])
    np.testing.assert_array_equal(item["front_image"][1], eps[0]["front_image"][0])
    np.testing.assert_array_equal(item["action"][:, 0], [0, 0, 1, 2, 3, 4])
    last = ds[len(ds) - 1]  # last window of the last episode runs past its end: repeats the final action
    np.testing.assert_array_equal(last["action"][:, 0].numpy() - 3000, [10, 11, 11, 11, 11, 11])  # starts at L - horizon + pad_after
    np.testing.assert_array_equal(last["proprio"].numpy(), eps[3]["proprio"][[10, 11]])
    # a batched read equals the per-item reads
    idx = [3, 0, len(ds) - 1, 3, 17]
    batch = ds.get_batch(idx)
    for j, i in enumerate(idx):
        for k, v in ds[i].items():
            torch.testing.assert_close(batch[k][j], v)


def test_split_by_episode_is_seeded_and_disjoint(tmp_path):
    build_store(tmp_path / "d.zarr", lengths=(6,) * 10)
    kw = dict(horizon=4, n_obs_steps=1, n_action_steps=2, val_ratio=0.3)
    tr, va = SequenceDataset(tmp_path / "d.zarr", split="train", seed=1, **kw), \
        SequenceDataset(tmp_path / "d.zarr", split="val", seed=1, **kw)
    assert len(va.episodes) == 3 and len(tr.episodes) == 7
    assert not set(tr.episodes) & set(va.episodes)
    np.testing.assert_array_equal(tr.episodes, SequenceDataset(tmp_path / "d.zarr", seed=1, **kw).episodes)
    assert not np.array_equal(tr.episodes, SequenceDataset(tmp_path / "d.zarr", seed=2, **kw).episodes)
    # every action in the val split comes from a val episode (action[:,0] = step + 1000 * episode)
    seen = {int(v["action"][0, 0] // 1000) for v in (va[i] for i in range(len(va)))}
    assert seen == set(va.episodes.tolist())


def test_dataloader_workers_and_lowdim_data(tmp_path):
    _, eps = build_store(tmp_path / "d.zarr")
    ds = SequenceDataset(tmp_path / "d.zarr", horizon=4, n_obs_steps=2, n_action_steps=2, split="all",
                         obs_keys=["front_image", "proprio"])
    ds[0]  # open handles in the parent; workers must reopen their own
    loader = make_loader(ds, batch_size=5, shuffle=True, num_workers=2, seed=0)
    n = 0
    for batch in loader:
        assert batch["front_image"].shape == (5, 2, 8, 8, 3) and batch["action"].shape == (5, 4, 2)
        n += 5
    assert n == len(ds) // 5 * 5
    std = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
    b = next(iter(std))
    assert b["proprio"].shape == (4, 2, 3)
    low = ds.lowdim_data()
    assert set(low) == {"proprio", "action"} and low["action"].shape == (ds.n_steps, 2)


def test_normalizer_modes_constant_dims_and_state_dict():
    rng = np.random.default_rng(0)
    data = {"action": rng.uniform(-3, 5, (500, 3)).astype(np.float32),
            "proprio": np.concatenate([rng.normal(2, 4, (500, 2)), np.full((500, 1), 7.0)], 1)}
    norm = Normalizer().fit(data, modes={"action": "minmax", "proprio": "gaussian"})
    a = norm.normalize("action", torch.as_tensor(data["action"]))
    assert torch.allclose(a.amin(0), -torch.ones(3), atol=1e-5) and torch.allclose(a.amax(0), torch.ones(3), atol=1e-5)
    p = norm.normalize("proprio", torch.as_tensor(data["proprio"], dtype=torch.float32))
    assert torch.allclose(p[:, :2].mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(p[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-3)
    assert torch.allclose(p[:, 2], torch.zeros(500))  # constant dim: finite, centred
    const = Normalizer().fit({"x": np.full((10, 2), 3.0)}, "minmax")
    assert torch.equal(const.normalize("x", torch.full((1, 2), 3.0)), torch.zeros(1, 2))
    x = torch.randn(4, 7, 3)
    torch.testing.assert_close(norm.unnormalize("action", norm.normalize("action", x)), x)

    from safetensors.torch import load_file, save_file

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.normalizer = Normalizer()

    pol = Policy()
    pol.normalizer = norm
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        save_file(pol.state_dict(), os.path.join(d, "m.safetensors"))
        sd = load_file(os.path.join(d, "m.safetensors"))
    fresh = Policy()  # empty normaliser: keys appear while loading
    fresh.load_state_dict(sd)
    assert fresh.normalizer.mode("proprio") == "gaussian"
    torch.testing.assert_close(fresh.normalizer.normalize("action", x), norm.normalize("action", x))
    alone = Normalizer.from_state_dict(sd, prefix="normalizer.")
    torch.testing.assert_close(alone.unnormalize("proprio", x[..., :3]), norm.unnormalize("proprio", x[..., :3]))
    with pytest.raises(KeyError, match="no key 'missing'"):
        norm.normalize("missing", x)


@pytest.mark.parametrize("frames_per_chunk", [1, 3])
def test_frame_reader_matches_zarr(tmp_path, frames_per_chunk):
    from s2robot.datasets.integrity import ChunkError
    from s2robot.datasets.reader import FrameReader
    from zarr.codecs import BloscCodec

    data = np.random.default_rng(0).integers(0, 255, (20, 4, 5, 3), dtype=np.uint8)
    for name, store, codecs in [("local", str(tmp_path / "a.zarr"), [BloscCodec(cname="lz4")]),
                                ("raw", str(tmp_path / "b.zarr"), None),
                                ("memory", zarr.storage.MemoryStore(), [BloscCodec(cname="zstd")])]:
        arr = zarr.create_array(store=store, shape=(24, 4, 5, 3), dtype="uint8", chunks=(frames_per_chunk, 4, 5, 3),
                                compressors=codecs, fill_value=7)
        arr[:20] = data  # the last frames stay unwritten: fill value, read as such only when asked to
        reader = FrameReader(arr, allow_missing=True)
        assert reader.fast == (name != "memory")
        strict = FrameReader(arr)
        np.testing.assert_array_equal(strict.read(np.array([19, 0])), data[[19, 0]])
        with pytest.raises(ChunkError, match=f"chunk {23 // frames_per_chunk} .*missing"):
            strict.read(np.array([5, 23]))
        idx = np.array([[19, 0, 0], [5, 23, 6]])
        want = np.concatenate([data, np.full((4, 4, 5, 3), 7, np.uint8)])[idx]
        np.testing.assert_array_equal(reader.read(idx), want)
        np.testing.assert_array_equal(reader.read(idx), np.asarray(arr.get_orthogonal_selection((idx.reshape(-1),))).reshape(want.shape))
        with pytest.raises(IndexError):
            reader.read(np.array([24]))
    f16 = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(6, 3, 2), dtype="float16", chunks=(1, 3, 2),
                            compressors=[BloscCodec(cname="lz4", shuffle="shuffle", typesize=2)])
    vals = np.random.default_rng(1).normal(size=(6, 3, 2)).astype(np.float16)
    f16[:] = vals
    np.testing.assert_array_equal(FrameReader(f16).read(np.array([4, 1])), vals[[4, 1]])
