"""timm VisionTransformer backbones: the tiny test ViT, MVP (MAE-pretrained ViT-S/B/L), DINOv2, any timm model."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from s2robot.encoders.base import IMAGENET_MEAN, IMAGENET_STD, load_state_file, load_strict, seeded

# MVP (Radosavovic et al., github.com/ir413/mvp, mvp/backbones/vit.py): note ViT-S uses 12 heads of width 32,
# not timm's vit_small (6 heads of 64). All: qkv bias, LayerNorm eps 1e-6, learned CLS, pos-embed incl. CLS.
MVP_ARCHS: dict[str, dict[str, Any]] = {
    "mvp_vit_s16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12, img_size=224),
    "mvp_vit_b16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=224),
    "mvp_vit_l16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, img_size=256),
}
TINY_TEST_ARCH: dict[str, Any] = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
# DINOv2 with 4 register tokens (Darcet et al. 2024) as timm architectures; prefix = CLS + 4 registers.
DINOV2_ARCHS: dict[str, str] = {
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2",
}


class TimmAdapter(nn.Module):
    """timm model -> ``forward_features`` tokens (n, p + g*g, C) after the final norm, or maps for CNNs."""

    def __init__(self, model: nn.Module, input_size: int) -> None:
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.embed_dim = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
        pe = getattr(model, "patch_embed", None)
        if pe is not None and getattr(pe, "grid_size", None) is not None:
            gh, gw = pe.grid_size
            if gh != gw:
                raise ValueError(f"non-square patch grid {pe.grid_size} at input {input_size}")
            self.grid = int(gh)
            self.fixed_size = not bool(getattr(model, "dynamic_img_size", False))
        else:  # CNN-like timm model: probe the map size once
            with torch.no_grad():
                out = model.forward_features(torch.zeros(1, 3, input_size, input_size))
            if out.dim() != 4:
                raise ValueError(f"timm model returned {tuple(out.shape)} features: expected (1, C, h, w) maps")
            self.grid, self.embed_dim = int(out.shape[-1]), int(out.shape[1])
            self.fixed_size = False
        self.blocks = getattr(model, "blocks", getattr(model, "stages", []))
        self.final_norm = getattr(model, "norm", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _timm_vit(arch: dict[str, Any], seed: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(mlp_ratio=4.0, qkv_bias=True, class_token=True, num_classes=0, global_pool="token",
              norm_layer=partial(nn.LayerNorm, eps=1e-6))
    kw.update(arch)
    with seeded(seed):
        return VisionTransformer(**kw)


def load_mvp_checkpoint(model: nn.Module, path: str) -> None:
    """Load an MVP/MAE ``.pth`` (``{"model": state_dict}``) into a timm ViT.

    Decoder keys (``decoder_*``, ``mask_token``) are dropped with a warning; everything else must match exactly.
    A position embedding trained at another resolution is resampled (bicubic) to the model's grid, with a warning.
    """
    from timm.layers import resample_abs_pos_embed

    obj = load_state_file(path)
    if "model" not in obj or not isinstance(obj["model"], dict):
        raise ValueError(f"{path}: not an MVP checkpoint (expected a dict with key 'model' holding the state dict; "
                         f"found keys {sorted(obj)[:8]})")
    state = dict(obj["model"])
    dropped = [k for k in state if k.startswith("decoder") or k == "mask_token"]
    if dropped:
        warnings.warn(f"{path}: ignoring {len(dropped)} MAE decoder keys (e.g. {dropped[0]})", stacklevel=3)
        for k in dropped:
            del state[k]
    pe = state.get("pos_embed")
    if pe is not None and pe.ndim == 3 and pe.shape[1] != model.pos_embed.shape[1]:
        n_pre = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        old = int(round((pe.shape[1] - n_pre) ** 0.5))
        warnings.warn(f"{path}: resampling pos_embed from a {old}x{old} grid to {tuple(model.patch_embed.grid_size)}",
                      stacklevel=3)
        state["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(model.patch_embed.grid_size),
                                                    old_size=[old, old], num_prefix_tokens=n_pre)
    load_strict(model, state, f"MVP checkpoint {path}")


def _build_vit(base: dict[str, Any], checkpoint: str | None, input_size: int | None, seed: int,
               arch: dict[str, Any] | None) -> tuple[nn.Module, int, tuple, tuple]:
    """A seeded timm VisionTransformer from ``base`` (+ ``arch`` overrides), optionally loading an MVP ``.pth``."""
    cfg = {**base, **(arch or {})}
    if input_size is not None:
        cfg["img_size"] = int(input_size)
    model = _timm_vit(cfg, seed)
    if checkpoint is not None:
        load_mvp_checkpoint(model, checkpoint)
    return TimmAdapter(model, cfg["img_size"]), cfg["img_size"], IMAGENET_MEAN, IMAGENET_STD


def build_vit_tiny_test(checkpoint: str | None, input_size: int | None, seed: int = 0,
                        arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """The seeded tiny ViT every test uses: 32 px, patch 8 (4x4 grid), dim 32, depth 2, 2 heads, CLS."""
    return _build_vit(TINY_TEST_ARCH, checkpoint, input_size, seed, arch)


def build_mvp(name: str, checkpoint: str | None, input_size: int | None, seed: int = 0,
              arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """MVP ViT (``mvp_vit_s16``/``b16``/``l16``) as a timm VisionTransformer, loading an MVP ``.pth``."""
    return _build_vit(MVP_ARCHS[name], checkpoint, input_size, seed, arch)


def build_timm(model_name: str, checkpoint: str | None, input_size: int | None, seed: int = 0,
               arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """Any timm model by name (``timm:<model_name>``), random or from a local weights file (never the hub).

    The file may be timm-native or any format timm's ViT ``checkpoint_filter_fn`` converts (original DINOv2,
    OpenCLIP-timm, ...); classifier-head keys are dropped, everything else loads strictly.
    """
    import timm

    kw: dict[str, Any] = dict(pretrained=False, num_classes=0, **(arch or {}))
    if input_size is not None:
        kw["img_size"] = int(input_size)
    try:
        with seeded(seed):
            try:
                model = timm.create_model(model_name, **kw)
            except TypeError as e:  # convolutional timm models take any size but no img_size argument
                if "img_size" not in kw or "img_size" not in str(e):
                    raise
                model = timm.create_model(model_name, **{k: v for k, v in kw.items() if k != "img_size"})
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown timm model {model_name!r}") from e
        raise
    if input_size is None:
        input_size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    if checkpoint is not None:
        state = load_state_file(checkpoint)
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        if isinstance(model, VisionTransformer):
            state = checkpoint_filter_fn(state, model)
        else:
            state = state.get("state_dict", state.get("model", state))
        own = model.state_dict()
        head = [k for k in state if k not in own and k.split(".")[0] in ("head", "fc", "classifier", "fc_norm")]
        state = {k: v for k, v in state.items() if k not in head}
        load_strict(model, state, f"timm checkpoint {checkpoint}")
    mean = tuple(model.pretrained_cfg.get("mean", IMAGENET_MEAN))
    std = tuple(model.pretrained_cfg.get("std", IMAGENET_STD))
    return TimmAdapter(model, input_size), input_size, mean, std
