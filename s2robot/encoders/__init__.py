"""Frozen pretrained vision encoders wrapped by S2 (``s2robot.s2``): ``build_encoder(name, ...)``.

Families: the tiny seeded test ViT (``vit_tiny_test``), MVP ViTs (``mvp_vit_s16``/``b16``/``l16``), CLIP
(``clip_vit_b16``/``l14`` from a HF directory, ``openclip_vit_b16``/``l14`` from an open_clip file), DINOv2 with
registers, any ``timm:<model_name>``, and torchvision trunks (``resnet18``, ``mobilenet_v2``). See docs/encoders.md.
"""

from s2robot.encoders.base import S2Encoder
from s2robot.encoders.registry import build_encoder, list_encoders

__all__ = ["build_encoder", "list_encoders", "S2Encoder"]
