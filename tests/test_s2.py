"""S2 forward: parity with an independent per-tile implementation, non-square images, chunking, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from s2robot.s2 import merge_tiles, plan_scales, s2_forward, split_tiles, upsample2x_bicubic

torch.set_num_threads(1)


def tiny_vit(class_token: bool = True, reg_tokens: int = 0, seed: int = 0) -> nn.Module:
    """A tiny timm ViT that accepts any multiple-of-8 input size (dynamic pos-embed)."""
    from timm.models.vision_transformer import VisionTransformer

    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        m = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=0,
                              class_token=class_token, reg_tokens=reg_tokens, dynamic_img_size=True,
                              global_pool="avg" if not class_token else "token")
    return m.eval()


def tiny_cnn(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.GELU(), nn.Conv2d(8, 12, 2, stride=2)).eval()


def reference_s2(model, images, scales, max_split, num_prefix, out_index=0):
    """Straightforward S2 from the paper's description: per scale, per tile (one model call each), paste tile
    maps into a canvas, adaptive-average-pool to the chosen grid, concat channels; prefix = mean over tiles."""
    B, _, H, W = images.shape
    sh, sw = (max_split, max_split) if isinstance(max_split, int) else max_split
    canvases, prefixes, is_maps = [], [], False
    for s in scales:
        h, w = int(H * s), int(W * s)
        x = F.interpolate(images.to(torch.float32), size=(h, w), mode="bicubic", align_corners=False)
        x = x.to(images.dtype)
        rows, cols = math.ceil(h / sh), math.ceil(w / sw)
        th, tw = h // rows, w // cols
        canvas, pre_sum = None, 0
        for i in range(rows):
            for j in range(cols):
                out = model(x[:, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw])
                if out.dim() == 3:
                    pre, pat = out[:, :num_prefix], out[:, num_prefix:]
                    pre_sum = pre_sum + pre
                    n = pat.shape[1]
                    gh = int(round(math.sqrt(n * th / tw)))
                    gw = n // gh
                    tile_map = pat.permute(0, 2, 1).reshape(B, -1, gh, gw)
                else:
                    tile_map, is_maps = out, True
                C, gh, gw = tile_map.shape[1:]
                if canvas is None:
                    canvas = torch.zeros(B, C, rows * gh, cols * gw, dtype=tile_map.dtype)
                canvas[:, :, i * gh:(i + 1) * gh, j * gw:(j + 1) * gw] = tile_map
        canvases.append(canvas)
        if num_prefix:
            prefixes.append(pre_sum / (rows * cols))
    grid = canvases[out_index].shape[-2:]
    pooled = [F.adaptive_avg_pool2d(c.float(), grid).to(c.dtype) for c in canvases]
    fused = torch.cat(pooled, dim=1)
    if is_maps:
        return fused
    tokens = fused.flatten(2).transpose(1, 2)
    if num_prefix:
        tokens = torch.cat([torch.cat(prefixes, dim=-1), tokens], dim=1)
    return tokens


def _images(b=2, h=32, w=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=gen) * 2 - 1


@pytest.mark.parametrize("scales", [(1, 2), (1, 2, 3)])
@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("max_split", [None, 16])
def test_parity_with_independent_implementation(scales, class_token, max_split):
    model = tiny_vit(class_token=class_token)
    p = model.num_prefix_tokens
    x = _images()
    with torch.no_grad():
        ours = s2_forward(model.forward_features, x, scales=scales, max_split_size=max_split, num_prefix=p)
        ref = reference_s2(model.forward_features, x, scales, max_split or 32, p)
    # scale-1 grid is 4x4 either way: one 32 px tile, or 2x2 tiles of 16 px with 2x2 patches each
    assert ours.shape == (2, p + 16, 24 * len(scales))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5


def test_parity_with_registers_and_output_index():
    model = tiny_vit(class_token=True, reg_tokens=2)
    x = _images()
    with torch.no_grad():
        ours = s2_forward(model.forward_features, x, scales=(1, 2), num_prefix=3, output_index=1)
        ref = reference_s2(model.forward_features, x, (1, 2), 32, 3, out_index=1)
    assert ours.shape == (2, 3 + 64, 48)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_non_square_images():
    model = tiny_vit()
    x = _images(h=32, w=48)
    with torch.no_grad():
        ours = s2_forward(model.forward_features, x, scales=(1, 2), max_split_size=(16, 24), num_prefix=1)
        ref = reference_s2(model.forward_features, x, (1, 2), (16, 24), 1)
    # scale 1: 2x2 tiles of 16x24 px -> 2x3 patches each -> 4x6 grid
    assert ours.shape == (2, 1 + 24, 48)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_maps_model_and_output_formats():
    model = tiny_cnn()
    x = _images(h=32, w=32)
    with torch.no_grad():
        maps = s2_forward(model, x, scales=(1, 2, 3))
        ref = reference_s2(model, x, (1, 2, 3), 32, 0)
        tokens = s2_forward(model, x, scales=(1, 2, 3), output="tokens")
    assert maps.shape == (2, 36, 4, 4) and (maps - ref).abs().max() <= 1e-5
    assert torch.equal(tokens, maps.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("max_batch", [1, 3, 5])
def test_chunking_equals_unchunked(max_batch):
    model = tiny_vit()
    x = _images(b=3)
    with torch.no_grad():
        full = s2_forward(model.forward_features, x, scales=(1, 2, 3), num_prefix=1)
        chunked = s2_forward(model.forward_features, x, scales=(1, 2, 3), num_prefix=1, max_batch=max_batch)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)


def test_one_batched_call_per_scale():
    model = tiny_vit()
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return model.forward_features(x)

    with torch.no_grad():
        s2_forward(counting, _images(b=2), scales=(1, 2, 3), num_prefix=1)
        assert calls == [2, 8, 18]
        calls.clear()
        s2_forward(counting, _images(b=2), scales=(1, 2, 3), num_prefix=1, max_batch=8)
        assert calls == [2, 8, 8, 8, 2]


def test_dtype_preserved_and_inference_mode():
    model = tiny_vit().double()
    x = _images().double()
    with torch.inference_mode():
        out = s2_forward(model.forward_features, x, scales=(1, 2), num_prefix=1)
    assert out.dtype == torch.float64
    model16 = tiny_vit().to(torch.bfloat16)
    with torch.inference_mode():
        out16 = s2_forward(model16.forward_features, x.to(torch.bfloat16), scales=(1, 2), num_prefix=1)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16.float()).all()


def test_split_merge_roundtrip():
    x = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    t = split_tiles(x, 2, 4)
    assert t.shape == (16, 3, 3, 2)
    assert torch.equal(t[0:2], x[:, :, :3, :2])  # tile (0, 0), batch inner
    assert torch.equal(t[2:4], x[:, :, :3, 2:4])  # tile (0, 1): row-major over tiles
    assert torch.equal(merge_tiles(t, 2, 4), x)


@pytest.mark.parametrize("shape", [(2, 3, 96, 96), (1, 2, 5, 7), (3, 1, 1, 1), (1, 3, 2, 1), (2, 4, 9, 16)])
def test_upsample2x_bicubic_equals_interpolate(shape):
    """The separable 2x bicubic of the engines' fast path: PyTorch's values (edges clamped) at every size."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    want = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    got = upsample2x_bicubic(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 2e-6
    assert (upsample2x_bicubic(x.double()) - F.interpolate(x.double(), scale_factor=2, mode="bicubic",
                                                           align_corners=False)).abs().max().item() < 1e-12


def test_fast_resize_same_tokens_and_only_without_gradients():
    model = tiny_vit()
    x = _images()
    with torch.no_grad():
        ref = s2_forward(model.forward_features, x, scales=(1, 2, 3), num_prefix=1)
        got = s2_forward(model.forward_features, x, scales=(1, 2, 3), num_prefix=1, fast_resize=True)
    assert (got - ref).abs().max().item() < 1e-4
    xg = x.clone().requires_grad_(True)  # gradients to the images: F.interpolate (the fast path writes out=)
    s2_forward(model.forward_features, xg, scales=(1, 2), num_prefix=1, fast_resize=True).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("kind", ["maps", "tokens"])
def test_channels_last_maps_same_tokens_contiguous(kind):
    """``channels_last=True`` stitches, pools and concatenates in channels-last memory: the same tokens (within
    float32 rounding) for a conv model (maps) and a ViT (tokens, prefix kept), at scales 1-3 and an explicit grid,
    and the tokens come out contiguous (no copy left for their readers)."""
    torch.manual_seed(0)
    if kind == "maps":
        conv = torch.nn.Conv2d(3, 16, 8, stride=8)
        model, prefix = (lambda t: conv(t)), 0
    else:
        model, prefix = tiny_vit().forward_features, 1
    x = _images()
    for kw in (dict(scales=(1, 2)), dict(scales=(1, 2, 3)), dict(scales=(1, 2), output_grid=2)):
        with torch.no_grad():
            ref = s2_forward(model, x, num_prefix=prefix, output="tokens", **kw)
            got = s2_forward(model, x, num_prefix=prefix, output="tokens", channels_last=True, **kw)
        assert got.shape == ref.shape and (got - ref).abs().max().item() < 1e-5, kw
        assert kind == "tokens" or got.is_contiguous()
    tiles = torch.randn(4 * 3, 5, 2, 3)
    assert torch.equal(merge_tiles(tiles, 2, 2, channels_last=True), merge_tiles(tiles, 2, 2))
    assert merge_tiles(tiles, 2, 2, channels_last=True).is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------------ errors
def test_error_non_4d():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        s2_forward(lambda x: x, torch.zeros(3, 32, 32), scales=(1, 2))


def test_error_size_not_divisible():
    with pytest.raises(ValueError, match="cannot be split"):
        s2_forward(lambda x: x, torch.zeros(1, 3, 30, 30), scales=(1, 1.5))  # 45 px into 2 tiles
    with pytest.raises(ValueError, match="cannot be split"):
        plan_scales(32, (1,), max_split_size=12)  # 32 px into 3 tiles


def test_error_non_square_token_count():
    def bad(x):
        return torch.zeros(x.shape[0], 15, 4)

    with pytest.raises(ValueError, match="not a square grid"):
        s2_forward(bad, torch.zeros(1, 3, 32, 32), scales=(1,))


def test_error_prefix_mismatch():
    model = tiny_vit()
    x = _images()
    with pytest.raises(ValueError, match="declares 1 prefix"):
        s2_forward(model.forward_features, x, scales=(1, 2), num_prefix=0)
    # a plain callable: the count check explains which prefix would make a grid
    fn = lambda t: model.forward_features(t)  # noqa: E731
    with pytest.raises(ValueError, match="num_prefix=1 the rest would be a 4x4 grid"):
        s2_forward(fn, x, scales=(1, 2), num_prefix=0)
    with pytest.raises(ValueError, match="feature maps"):
        s2_forward(tiny_cnn(), x, scales=(1, 2), num_prefix=1)


def test_error_bad_arguments():
    x = _images()
    with pytest.raises(ValueError, match="scales"):
        s2_forward(lambda t: t, x, scales=None)
    with pytest.raises(ValueError, match="max_batch"):
        s2_forward(tiny_cnn(), x, scales=(1,), max_batch=0)
    with pytest.raises(ValueError, match="output"):
        s2_forward(tiny_cnn(), x, scales=(1,), output="grid")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast():
    model = tiny_vit().cuda()
    x = _images().cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = s2_forward(model.forward_features, x, scales=(1, 2), num_prefix=1)
    assert out.device.type == "cuda" and out.shape == (2, 17, 48)
    with torch.no_grad():
        ref = s2_forward(model.forward_features, x, scales=(1, 2), num_prefix=1)
    assert (out.float() - ref).abs().max() < 0.1
