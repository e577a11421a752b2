"""Reading a trained policy back for inference: the checkpoint layout, ``resolve_checkpoint``, ``load_policy``.

A checkpoint directory (``<run>/checkpoints/step_<N>/``, written by :mod:`s2robot.training.checkpoint`) holds

- ``model.safetensors``: the policy's trainable weights and buffers (normaliser included) plus ``ema.<name>``
  shadow weights of the EMA,
- ``encoder.safetensors``: the frozen encoder's weights, so a deployed robot needs no original ``.pth``,
- ``config.yaml``: the resolved training config plus ``shape_meta``,
- ``state.json``: step, epoch, seed, LR-scheduler state, optimiser hyper-parameters, EMA counters,
- ``optimizer.safetensors``: the optimiser's moment tensors.

:func:`load_policy` rebuilds an eval-mode policy (EMA weights by default) from the directory alone; it also accepts a
run directory and picks its latest checkpoint. Evaluation and deployment use this module, never the training code.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from s2robot.device import resolve_device
from s2robot.encoders import build_encoder
from s2robot.encoders.base import load_strict
from s2robot.encoders.engine import check_engine
from s2robot.policies.base import ShapeMeta
from s2robot.policies.diffusion import set_denoiser_engine
from s2robot.policies.factory import build_policy, parse_policy_config

__all__ = [
    "load_policy", "set_encoder_engine", "set_inference_engine", "resolve_checkpoint", "read_config", "read_model_tensors", "FORMAT_VERSION", "ENCODER_PREFIX", "EMA_PREFIX",
    "MODEL_FILE", "ENCODER_FILE", "OPTIM_FILE", "CONFIG_FILE", "STATE_FILE",
]

FORMAT_VERSION = 1
ENCODER_PREFIX = "obs_conditioner.token_encoder."
EMA_PREFIX = "ema."
MODEL_FILE, ENCODER_FILE, OPTIM_FILE = "model.safetensors", "encoder.safetensors", "optimizer.safetensors"
CONFIG_FILE, STATE_FILE = "config.yaml", "state.json"
# Parameter names before the renames of issue 19 (obs_encoder -> obs_conditioner, frozen_encoder -> token_encoder,
# poolers -> camera_encoders): checkpoints written with them still load.
_LEGACY_PREFIXES = (
    ("obs_encoder.frozen_encoder.", "obs_conditioner.token_encoder."),
    ("obs_encoder.poolers.", "obs_conditioner.camera_encoders."),
    ("obs_encoder.", "obs_conditioner."),
)


def read_model_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` as {name: tensor}, parameter names of older checkpoints mapped to today's."""
    out = {}
    for key, value in load_file(str(path)).items():
        ema = EMA_PREFIX if key.startswith(EMA_PREFIX) else ""
        name = key[len(ema):]
        for old, new in _LEGACY_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[ema + name] = value
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as is; a run directory (or its ``checkpoints/``) -> its latest ``step_*``."""
    p = Path(path)
    if (p / MODEL_FILE).is_file():
        return p
    for folder in (p / "checkpoints", p):
        steps = sorted(folder.glob("step_*"), key=lambda q: int(q.name.split("_")[-1]) if q.name[5:].isdigit() else -1)
        steps = [s for s in steps if (s / MODEL_FILE).is_file()]
        if steps:
            return steps[-1]
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    raise FileNotFoundError(f"{p} is neither a checkpoint directory ({MODEL_FILE}) nor a run with checkpoints/step_*")


def read_config(path: str | Path):
    """The checkpoint's resolved config (DictConfig)."""
    p = resolve_checkpoint(path) / CONFIG_FILE
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p.parent} has no {CONFIG_FILE}")
    return OmegaConf.load(p)


def _build_encoder_for_load(enc_cfg: Mapping[str, Any], ckpt: Path, device: torch.device,
                            recorded_hash: str | None = None):
    """Rebuild the frozen encoder's architecture, then load its weights from ``encoder.safetensors``.

    When the original weights file is gone (a robot computer), the encoder is rebuilt without it and gets its
    weights from the checkpoint; ``config_hash`` is then restored to ``recorded_hash``, the training-time value,
    since the weights are the same ones. (HF CLIP directories are also the architecture: they must stay present.)
    """
    kwargs = dict(enc_cfg)
    wfile = ckpt / ENCODER_FILE
    dropped = bool(wfile.is_file() and kwargs.get("checkpoint") and not Path(str(kwargs["checkpoint"])).exists())
    if dropped:
        kwargs["checkpoint"] = None  # the original weights file is not needed: encoder.safetensors has them
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")
        encoder = build_encoder(**kwargs, device="cpu")
    if wfile.is_file():
        load_strict(encoder, load_file(str(wfile)), str(wfile))
    if dropped and recorded_hash:
        encoder.config_hash = str(recorded_hash)
    return encoder.to(device)


def load_policy(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild the policy of a checkpoint (or a run's latest) in eval mode on ``device``; EMA weights if saved."""
    ckpt = resolve_checkpoint(path)
    dev = resolve_device(device)
    cfg = OmegaConf.to_container(read_config(ckpt), resolve=True)
    if "shape_meta" not in cfg or "policy" not in cfg:
        raise ValueError(f"{ckpt / CONFIG_FILE} lacks 'policy' or 'shape_meta'; not an s2robot policy checkpoint")
    meta = ShapeMeta.from_dict(cfg["shape_meta"])
    _, _, obs_cfg = parse_policy_config(cfg["policy"])
    needs_encoder = obs_cfg.backbone == "tokens" and cfg.get("encoder") and meta.cameras
    encoder = (_build_encoder_for_load(cfg["encoder"], ckpt, torch.device("cpu"), cfg.get("encoder_config_hash"))
               if needs_encoder else None)
    policy = build_policy(cfg["policy"], meta, encoder=encoder)
    tensors = read_model_tensors(ckpt / MODEL_FILE)
    weights = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    if encoder is not None:
        weights.update({ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()})
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{ckpt / MODEL_FILE} does not match the policy built from its config: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    if use_ema and any(k.startswith(EMA_PREFIX) for k in tensors):
        params = dict(policy.named_parameters())
        with torch.no_grad():
            for k, v in tensors.items():
                if k.startswith(EMA_PREFIX):
                    params[k[len(EMA_PREFIX):]].copy_(v)
    return policy.to(dev).eval()


def set_encoder_engine(policy: torch.nn.Module, engine: str | None) -> str | None:
    """Compute the policy's frozen token encoder with ``engine`` ("auto", "torch", "fused", "openvino"; None keeps
    the loaded "auto"). The engine changes speed, not tokens (:mod:`s2robot.encoders.engine`), so checkpoints do not
    record it and every machine picks its own. Returns the engine now in use (None for a policy without a token
    encoder). Raises ValueError (one line) for an unknown engine or one that cannot run here (openvino not
    installed, a trainable encoder, ...), before any rollout starts.
    """
    encoder = getattr(getattr(policy, "obs_conditioner", None), "token_encoder", None)
    if encoder is None:
        return None
    if engine is not None:
        encoder.engine = check_engine(str(engine))
    return encoder.engine_in_use


def set_inference_engine(policy: torch.nn.Module, engine: str | None) -> dict[str, str]:
    """``engine`` (None keeps "auto") for every frozen part a loaded policy computes at inference: its token
    encoder (:func:`set_encoder_engine`) and a diffusion U-Net's denoising steps
    (:func:`~s2robot.policies.diffusion.set_denoiser_engine`). Returns what runs now, for the report:
    ``{"encoder_engine": ..., "denoiser_engine": ...}``, each only where the policy has that part. Raises
    ValueError (one line) as those two do, before any rollout."""
    used = {"encoder_engine": set_encoder_engine(policy, engine),
            "denoiser_engine": set_denoiser_engine(policy, engine)}
    return {k: v for k, v in used.items() if v is not None}
