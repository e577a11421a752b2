"""CLIP vision towers: HF ``CLIPVisionModel`` from a local directory, or open_clip from a local checkpoint file.

Both give the same tokens for the same weights: every token (CLS first, then patches) of the last transformer
layer after the final LayerNorm (HF ``post_layernorm``, open_clip ``ln_post``), before the projection head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from s2robot.encoders.base import CLIP_MEAN, CLIP_STD, load_state_file, load_strict, seeded


class HFCLIPAdapter(nn.Module):
    """``transformers`` CLIP vision transformer -> post-LN tokens (n, 1 + g*g, C)."""

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # transformers < 5 nests the tower in ``.vision_model``; >= 5 has it flat on CLIPVisionModel
        self.vision_model = getattr(model, "vision_model", model)
        cfg = model.config
        self.embed_dim = int(cfg.hidden_size)
        self.grid = int(cfg.image_size) // int(cfg.patch_size)
        self.blocks = self.vision_model.encoder.layers
        self.final_norm = self.vision_model.post_layernorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model(pixel_values=x).last_hidden_state
        return self.final_norm(hidden)


def build_hf_clip(checkpoint: str, input_size: int | None, seed: int = 0,
                  arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """Load ``CLIPVisionModel`` from a local directory (``config.json`` + ``model.safetensors``; a full
    ``CLIPModel`` directory works too, its text tower is ignored). ``input_size`` must equal the config's."""
    from transformers import CLIPVisionModel
    from transformers.utils import logging as hf_logging

    path = Path(checkpoint)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"HF CLIP checkpoint must be a local directory with config.json (+ safetensors): {path}")
    if arch:
        raise ValueError("HF CLIP takes its architecture from config.json; `arch` overrides are not supported")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # a full CLIPModel dir lists every text-tower key as 'unused'
    hf_logging.disable_progress_bar()
    try:
        model, info = CLIPVisionModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ValueError(f"HF CLIP checkpoint {path} lacks vision weights: missing {sorted(info['missing_keys'])[:8]}, "
                         f"mismatched {list(info.get('mismatched_keys', []))[:8]}")
    size = int(model.config.image_size)
    if input_size is not None and int(input_size) != size:
        raise ValueError(f"HF CLIP at {path} was trained at {size} px; input_size={input_size} is not supported")
    return HFCLIPAdapter(model.eval()), size, CLIP_MEAN, CLIP_STD


class OpenCLIPAdapter(nn.Module):
    """open_clip ``VisionTransformer`` -> tokens (n, 1 + g*g, C) after ``ln_post``."""

    num_prefix_tokens = 1

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise ValueError("open_clip towers with attentional pooling / final_ln_after_pool are not supported")
        self.visual = visual
        self.embed_dim = int(visual.ln_post.normalized_shape[0])
        self.grid = int(visual.grid_size[0])
        self.blocks = visual.transformer.resblocks
        self.final_norm = visual.ln_post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v._embeds(x)
        x = v.transformer(x)
        return v.ln_post(x)


def build_open_clip(model_name: str, checkpoint: str | None, input_size: int | None, seed: int = 0,
                    arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """open_clip vision tower of ``model_name`` (e.g. ``ViT-B-16``), weights from a local open_clip checkpoint
    (a CLIP state dict with ``visual.*`` keys, optionally under ``state_dict`` with ``module.`` prefixes; ``.pt``,
    ``.bin`` or ``.safetensors``). ``arch``: ``{"vision_cfg": {...}, "embed_dim": int, "quick_gelu": bool}``
    overrides of the named config (use a ``-quickgelu`` name for OpenAI weights)."""
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model_name!r}")
    arch = dict(arch or {})
    vision_cfg = {**cfg["vision_cfg"], **arch.pop("vision_cfg", {})}
    embed_dim = int(arch.pop("embed_dim", cfg["embed_dim"]))
    quick_gelu = bool(arch.pop("quick_gelu", cfg.get("quick_gelu", False)))
    if arch:
        raise ValueError(f"unknown open_clip arch keys {sorted(arch)}")
    if input_size is not None:
        vision_cfg["image_size"] = int(input_size)
    with seeded(seed):
        visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
    if checkpoint is not None:
        state = load_state_file(checkpoint)
        state = state.get("state_dict", state)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        if not state:
            raise ValueError(f"{checkpoint}: no 'visual.*' keys: not an open_clip CLIP checkpoint")
        load_strict(visual, state, f"open_clip checkpoint {checkpoint}")
    size = int(vision_cfg["image_size"])
    mean = tuple(vision_cfg.get("image_mean") or CLIP_MEAN)
    std = tuple(vision_cfg.get("image_std") or CLIP_STD)
    return OpenCLIPAdapter(visual), size, mean, std
