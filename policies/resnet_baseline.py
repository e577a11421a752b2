"""Trainable image baseline: robomimic's ResNet18Conv + SpatialSoftmax with crop randomisation and GroupNorm.

This is the vision stack of Diffusion Policy's CNN variant: robomimic's ``ResNet18Conv`` (random init) with every
``BatchNorm2d`` replaced by ``GroupNorm(channels // 16, channels)`` (BatchNorm misbehaves with EMA and small
per-GPU batches), robomimic's ``CropRandomizer`` (random crop in training, centre crop in eval) and
``SpatialSoftmax`` keypoints, then a linear projection to ``d_model``. The classes are robomimic's own; only the
norm swap and the glue live here.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Sequence

import torch
from torch import nn

__all__ = ["ResNetImageEncoder", "replace_batchnorm_with_groupnorm", "robomimic_spatial_softmax"]


def _robomimic():
    """Import robomimic's model classes, hiding its 'no private macro file' banner."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from robomimic.models.base_nets import ResNet18Conv, SpatialSoftmax
        from robomimic.models.obs_core import CropRandomizer
    return ResNet18Conv, SpatialSoftmax, CropRandomizer


def robomimic_spatial_softmax(input_shape: Sequence[int], num_kp: int) -> nn.Module:
    """robomimic's ``SpatialSoftmax``: (B, C, H, W) maps -> (B, num_kp, 2) expected keypoint positions in [-1, 1]."""
    _, spatial_softmax, _ = _robomimic()
    return spatial_softmax(input_shape=list(input_shape), num_kp=int(num_kp))


def replace_batchnorm_with_groupnorm(module: nn.Module, group_size: int = 16) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` (in place) by ``GroupNorm(C // group_size, C)``."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(max(1, c // group_size), c))
        else:
            replace_batchnorm_with_groupnorm(child, group_size)
    return module


class ResNetImageEncoder(nn.Module):
    """uint8 (B, H, W, 3) frames -> (B, 1, d_model) features, trained end to end with the policy."""

    def __init__(
        self, image_shape: Sequence[int], d_model: int, crop_ratio: float = 0.9, num_kp: int = 32, group_size: int = 16
    ) -> None:
        super().__init__()
        ResNet18Conv, _, CropRandomizer = _robomimic()
        H, W = int(image_shape[0]), int(image_shape[1])
        ch, cw = int(round(H * crop_ratio)), int(round(W * crop_ratio))
        self.crop = CropRandomizer(input_shape=(3, H, W), crop_height=ch, crop_width=cw) if (ch, cw) != (H, W) else None
        with warnings.catch_warnings():  # robomimic passes torchvision's deprecated `pretrained=False`
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*")
            trunk = ResNet18Conv(input_channel=3, pretrained=False)
        self.backbone = replace_batchnorm_with_groupnorm(trunk, group_size)
        feat_shape = self.backbone.output_shape([3, ch, cw])
        if feat_shape[1] * feat_shape[2] < 2:
            raise ValueError(
                f"images of {H}x{W} (crop {ch}x{cw}) give a {feat_shape[1]}x{feat_shape[2]} ResNet-18 feature map, on "
                "which spatial-softmax keypoints are constant; use images of at least 64 px for the resnet18 baseline"
            )
        self.pool = robomimic_spatial_softmax(feat_shape, num_kp)
        self.proj = nn.Linear(2 * num_kp, d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"ResNetImageEncoder expects uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0
        if self.crop is not None:
            x = self.crop.forward_in(x)
        feats = self.proj(self.pool(self.backbone(x)).flatten(1))
        if self.crop is not None:
            feats = self.crop.forward_out(feats)
        return feats[:, None]
