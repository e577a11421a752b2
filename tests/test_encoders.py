"""Encoder registry: the test ViT's API, input handling, frozen-ness, trainable modes and config_hash."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from s2robot.encoders import build_encoder, list_encoders
from s2robot.s2 import s2_forward

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def enc():
    return build_encoder("vit_tiny_test")


def _uint8(b=2, h=40, w=56, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8))


def test_tiny_test_encoder_api(enc):
    assert (enc.input_size, enc.grid, enc.num_prefix) == (32, 4, 1)
    assert enc.out_dim == 32 * 2 and enc.num_tokens == 1 + 16
    tokens = enc.encode(_uint8())
    assert tokens.shape == (2, enc.num_tokens, enc.out_dim) and tokens.dtype == torch.float32
    assert isinstance(enc.config_hash, str) and len(enc.config_hash) == 16
    assert "vit_tiny_test" in list_encoders() and "timm:<model_name>" in list_encoders()


def test_deterministic_and_independent_of_global_rng(enc):
    x = _uint8()
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    other = build_encoder("vit_tiny_test")
    after = torch.rand(1)
    torch.manual_seed(1234)
    assert torch.equal(after, torch.rand(1))  # building consumed nothing from the global RNG
    torch.random.set_rng_state(state)
    assert torch.equal(other.encode(x), enc.encode(x))
    assert other.config_hash == enc.config_hash
    different = build_encoder("vit_tiny_test", seed=1)
    assert not torch.equal(different.encode(x), enc.encode(x))


def test_config_rebuilds(enc):
    again = build_encoder(**enc.config)
    assert again.config_hash == enc.config_hash
    assert torch.equal(again.encode(_uint8()), enc.encode(_uint8()))


def test_input_formats_agree(enc):
    x = _uint8(h=32, w=32)
    as_float = x.permute(0, 3, 1, 2).float() / 255
    t_uint8 = enc.encode(x)
    assert torch.allclose(enc.encode(as_float), t_uint8, atol=1e-6)
    assert torch.equal(enc.encode(x.numpy()), t_uint8)
    assert torch.equal(enc(x), t_uint8)


def test_encode_is_s2_of_the_backbone(enc):
    x = _uint8(h=32, w=32)
    pre = enc.preprocess(x)
    assert pre.shape == (2, 3, 32, 32)
    with torch.no_grad():
        ref = s2_forward(enc.adapter.model.forward_features, pre, scales=(1, 2), num_prefix=1)
    assert torch.equal(enc.encode(x), ref)


def test_resizes_any_input_size(enc):
    for h, w in [(24, 24), (96, 128), (7, 300)]:
        assert enc.encode(_uint8(1, h, w)).shape == (1, 17, 64)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(32, 32, 3, dtype=torch.uint8), "4-D"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "channels-last"),
        (torch.zeros(1, 32, 32, 3), "channels-first"),
        (torch.full((1, 3, 8, 8), 255.0), r"\[0, 1\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), "uint8 or floating"),
        ([[1, 2]], "torch.Tensor or numpy"),
    ],
)
def test_bad_images_raise(enc, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        enc.encode(bad)


def test_frozen(enc):
    assert not enc.training
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.adapter.training  # stays in eval mode
    assert not enc.encode(_uint8(1)).requires_grad


def test_trainable_modes():
    norm = build_encoder("vit_tiny_test", trainable="norm")
    names = {n for n, p in norm.named_parameters() if p.requires_grad}
    assert names == {"adapter.model.norm.weight", "adapter.model.norm.bias"}
    tokens = norm.encode(_uint8(1))
    assert tokens.requires_grad
    tokens.sum().backward()
    assert norm.adapter.model.norm.weight.grad is not None
    last = build_encoder("vit_tiny_test", trainable="last_k:1")
    names = {n for n, p in last.named_parameters() if p.requires_grad}
    assert any(n.startswith("adapter.model.blocks.1.") for n in names)
    assert not any(n.startswith("adapter.model.blocks.0.") for n in names)
    for bad in ("some", "last_k:0", "last_k:x", "last_k:9"):
        with pytest.raises(ValueError, match="last_k|trainable"):
            build_encoder("vit_tiny_test", trainable=bad)


def test_config_hash_tracks_every_input(tmp_path, enc):
    base = enc.config_hash
    variants = [
        dict(scales=(1, 2, 3)),
        dict(scales=(1,)),
        dict(input_size=48),
        dict(max_split_size=16, arch={"dynamic_img_size": True}),
        dict(trainable="norm"),
        dict(use_prefix=False),
        dict(seed=3),
        dict(grid_scale=-1),
    ]
    hashes = {build_encoder("vit_tiny_test", **v).config_hash for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    # same inputs -> same hash; max_batch and device do not change outputs, so not the hash
    assert build_encoder("vit_tiny_test", max_batch=2, device="cpu").config_hash == base
    # checkpoint content, not its path, is hashed
    state = {k: v.clone() for k, v in enc.adapter.model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "a.pth")
    shutil.copy(tmp_path / "a.pth", tmp_path / "b.pth")  # same bytes at another path
    state["norm.bias"] += 1
    torch.save({"model": state}, tmp_path / "c.pth")
    ha = build_encoder("vit_tiny_test", checkpoint=str(tmp_path / "a.pth")).config_hash
    hb = build_encoder("vit_tiny_test", checkpoint=str(tmp_path / "b.pth")).config_hash
    hc = build_encoder("vit_tiny_test", checkpoint=str(tmp_path / "c.pth")).config_hash
    assert ha == hb and ha != hc and ha != base


def test_grid_scale_keeps_the_largest_scales_grid(enc):
    x = _uint8(h=32, w=32)
    fine = build_encoder("vit_tiny_test", grid_scale=-1)
    assert (fine.grid, fine.num_tokens, fine.out_dim) == (8, 1 + 64, enc.out_dim)
    assert build_encoder(**fine.config).config_hash == fine.config_hash
    assert build_encoder("vit_tiny_test", grid_scale=1).config_hash == fine.config_hash  # -1 is index 1 of (1, 2)
    with torch.no_grad():
        ref = s2_forward(enc.adapter.model.forward_features, enc.preprocess(x), scales=(1, 2), num_prefix=1,
                         output_index=1)
    tokens = fine.encode(x)
    assert torch.equal(tokens, ref)
    # the scale-2 half is scale 2's own 8x8 map; pooled back to 4x4 the tokens are the base-grid encoder's
    grid_maps = tokens[:, 1:].transpose(1, 2).reshape(2, -1, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(grid_maps, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, enc.encode(x)[:, 1:], rtol=0, atol=1e-5)
    for bad in (2, -3, 0.5, True, "fine"):
        with pytest.raises(ValueError, match="grid_scale must be an index into scales"):
            build_encoder("vit_tiny_test", grid_scale=bad)


def test_use_prefix_false_drops_cls(enc):
    x = _uint8()
    no_cls = build_encoder("vit_tiny_test", use_prefix=False)
    assert no_cls.num_prefix == 0 and no_cls.num_tokens == 16
    assert torch.equal(no_cls.encode(x), enc.encode(x)[:, 1:])


def test_max_batch_same_result(enc):
    x = _uint8(b=3)
    chunked = build_encoder("vit_tiny_test", max_batch=2)
    torch.testing.assert_close(chunked.encode(x), enc.encode(x), rtol=0, atol=1e-6)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vit_huge_nonexistent")
    with pytest.raises(ValueError, match="needs checkpoint"):
        build_encoder("clip_vit_b16")
    with pytest.raises(ValueError, match="only takes 32x32"):
        build_encoder("vit_tiny_test", scales=(1, 1.5))
    with pytest.raises(ValueError, match="timm"):
        build_encoder("timm:")
    with pytest.raises(ValueError, match="unknown timm model"):
        build_encoder("timm:not_a_model_xyz")
    with pytest.raises(FileNotFoundError):
        build_encoder("mvp_vit_s16", checkpoint="/nonexistent/mvp.pth")


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="random weights"):
        build_encoder("mvp_vit_s16", arch=dict(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_encoder("vit_tiny_test")


def test_mvp_small_is_twelve_heads():
    with pytest.warns(UserWarning):
        enc = build_encoder("mvp_vit_s16", arch=dict(depth=1))
    attn = enc.adapter.model.blocks[0].attn
    assert attn.num_heads == 12 and enc.adapter.embed_dim == 384 and enc.grid == 14
    with pytest.warns(UserWarning):
        large = build_encoder("mvp_vit_l16", arch=dict(depth=1, embed_dim=64, num_heads=4))
    assert large.input_size == 256 and large.grid == 16


def test_encoder_configs_hold_build_kwargs():
    import inspect
    from pathlib import Path

    from omegaconf import OmegaConf

    import s2robot.configs

    folder = Path(s2robot.configs.__file__).parent / "encoder"
    params = set(inspect.signature(build_encoder).parameters) - {"device"}  # engine: there, `auto`, not in the hash
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        cfg = OmegaConf.load(f)
        assert set(cfg.keys()) == params, f.name
        assert cfg.name == f.stem and cfg.engine == "auto"
    tiny = OmegaConf.load(folder / "vit_tiny_test.yaml")
    enc = build_encoder(**tiny)  # a DictConfig works directly
    assert enc.config_hash == build_encoder("vit_tiny_test").config_hash
    assert enc.config == {k: v for k, v in OmegaConf.to_container(tiny).items() if k != "engine"}
    assert build_encoder(**{**tiny, "engine": "torch"}).config_hash == enc.config_hash  # speed only, same features


def test_config_hash_is_stable(enc):
    # a literal: the hash must not drift between processes, machines or refactors (it names cached features);
    # change it only together with PIPELINE_VERSION when encode() changes numerically
    assert enc.config_hash == "2645e2970961452a"
    assert build_encoder("vit_tiny_test", scales=[1.0, 2.0]).config_hash == enc.config_hash
