"""Checkpoints without pickle: safetensors for tensors, YAML for the config, JSON for the training state.

A checkpoint directory (``<run>/checkpoints/step_<N>/``) holds

- ``model.safetensors``: the policy's trainable weights and buffers (normaliser included) plus ``ema.<name>``
  shadow weights of the EMA,
- ``encoder.safetensors``: the frozen encoder's weights, so a deployed robot needs no original ``.pth`` (hard-linked
  from the previous checkpoint of the run when unchanged),
- ``config.yaml``: the resolved training config plus ``shape_meta``,
- ``state.json``: step, epoch, seed, LR-scheduler state, optimiser hyper-parameters, EMA counters,
- ``optimizer.safetensors``: the optimiser's moment tensors.

:func:`load_policy` rebuilds an eval-mode policy (EMA weights by default) from the directory alone; it also accepts a
run directory and picks its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "save_checkpoint", "load_policy", "load_training_state", "resolve_checkpoint", "read_config", "ENCODER_PREFIX",
]

FORMAT_VERSION = 1
ENCODER_PREFIX = "obs_encoder.frozen_encoder."
EMA_PREFIX = "ema."
MODEL_FILE, ENCODER_FILE, OPTIM_FILE = "model.safetensors", "encoder.safetensors", "optimizer.safetensors"
CONFIG_FILE, STATE_FILE = "config.yaml", "state.json"


def _tensors(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous, unshared CPU copies (safetensors refuses tensors that share storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in d.items()}


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_join(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    policy: torch.nn.Module,
    config: Mapping[str, Any],
    *,
    step: int,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    ema: Any = None,
    extra_state: Mapping[str, Any] | None = None,
    previous: str | Path | None = None,
) -> Path:
    """Write a checkpoint directory atomically (a temp dir renamed into place) and return its path.

    ``config``: the resolved config as plain containers, with ``shape_meta``. ``previous``: an earlier checkpoint
    of the same run whose ``encoder.safetensors`` is hard-linked when the frozen encoder is unchanged.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sd = policy.state_dict()
        model = {k: v for k, v in sd.items() if not k.startswith(ENCODER_PREFIX)}
        encoder = {k[len(ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}
        if ema is not None:
            model.update(ema.tensors())
        meta = {"format": "pt", "s2robot_checkpoint": str(FORMAT_VERSION)}
        save_file(_tensors(model), str(tmp / MODEL_FILE), metadata=meta)
        if encoder:
            frozen = not any(p.requires_grad for n, p in policy.named_parameters() if n.startswith(ENCODER_PREFIX))
            prev = Path(previous) / ENCODER_FILE if previous else None
            if frozen and prev is not None and prev.is_file():
                os.link(prev, tmp / ENCODER_FILE)  # same frozen weights: share the bytes
            else:
                save_file(_tensors(encoder), str(tmp / ENCODER_FILE), metadata=meta)
        OmegaConf.save(OmegaConf.create(dict(config)), tmp / CONFIG_FILE)
        state: dict[str, Any] = {"format": FORMAT_VERSION, "step": int(step), "epoch": int(epoch)}
        if optimizer is not None:
            opt_tensors, opt_meta = _optimizer_split(optimizer)
            save_file(_tensors(opt_tensors), str(tmp / OPTIM_FILE), metadata=meta)
            state["optimizer"] = opt_meta
        if lr_scheduler is not None:
            state["lr_scheduler"] = lr_scheduler.state_dict()
        if ema is not None:
            state["ema"] = ema.counters()
        state.update(extra_state or {})
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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
    from omegaconf import OmegaConf

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
    from s2robot.encoders import build_encoder
    from s2robot.encoders.base import load_strict

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
    from omegaconf import OmegaConf

    from s2robot.device import resolve_device
    from s2robot.policies import build_policy
    from s2robot.policies.base import ShapeMeta

    ckpt = resolve_checkpoint(path)
    dev = resolve_device(device)
    cfg = OmegaConf.to_container(read_config(ckpt), resolve=True)
    if "shape_meta" not in cfg or "policy" not in cfg:
        raise ValueError(f"{ckpt / CONFIG_FILE} lacks 'policy' or 'shape_meta'; not an s2robot policy checkpoint")
    meta = ShapeMeta.from_dict(cfg["shape_meta"])
    needs_encoder = ((cfg["policy"].get("obs") or {}).get("backbone", "tokens") == "tokens" and cfg.get("encoder")
                     and meta.cameras)
    encoder = (_build_encoder_for_load(cfg["encoder"], ckpt, torch.device("cpu"), cfg.get("encoder_config_hash"))
               if needs_encoder else None)
    policy = build_policy(cfg["policy"], meta, encoder=encoder)
    tensors = load_file(str(ckpt / MODEL_FILE))
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


def load_training_state(
    path: str | Path,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    ema: Any = None,
) -> dict[str, Any]:
    """Restore raw weights, optimiser, scheduler and EMA in place for resuming; returns ``state.json``."""
    ckpt = resolve_checkpoint(path)
    state = json.loads((ckpt / STATE_FILE).read_text())
    tensors = load_file(str(ckpt / MODEL_FILE))
    weights = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    if (ckpt / ENCODER_FILE).is_file():  # a partly trainable encoder's fine-tuned weights live only there
        weights.update({ENCODER_PREFIX + k: v for k, v in load_file(str(ckpt / ENCODER_FILE)).items()})
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(ENCODER_PREFIX)]
    if missing or unexpected:
        raise ValueError(f"cannot resume from {ckpt}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"cannot resume from {ckpt}: no optimiser state saved")
        opt = _optimizer_join(load_file(str(ckpt / OPTIM_FILE)), state["optimizer"])
        optimizer.load_state_dict(opt)
    if lr_scheduler is not None and "lr_scheduler" in state:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:
        ema.load(tensors, state.get("ema"))
    return state
