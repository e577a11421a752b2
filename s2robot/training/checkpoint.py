"""Writing checkpoints without pickle: safetensors for tensors, YAML for the config, JSON for the training state.

A checkpoint directory (``<run>/checkpoints/step_<N>/``) holds

- ``model.safetensors``: the policy's trainable weights and buffers (normaliser included) plus ``ema.<name>``
  shadow weights of the EMA,
- ``encoder.safetensors``: the frozen encoder's weights, so a deployed robot needs no original ``.pth`` (hard-linked
  from the previous checkpoint of the run when unchanged),
- ``config.yaml``: the resolved training config plus ``shape_meta``,
- ``state.json``: step, epoch, seed, LR-scheduler state, optimiser hyper-parameters, EMA counters,
- ``optimizer.safetensors``: the optimiser's moment tensors.

:func:`load_training_state` restores everything for an exact resume. Reading a checkpoint for inference
(:func:`~s2robot.policies.loading.load_policy`, the file names) lives in :mod:`s2robot.policies.loading`, so
evaluation and deployment never import the training code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from s2robot.policies.loading import (
    CONFIG_FILE, EMA_PREFIX, ENCODER_FILE, ENCODER_PREFIX, FORMAT_VERSION, MODEL_FILE, OPTIM_FILE, STATE_FILE,
    read_model_tensors, resolve_checkpoint,
)

__all__ = ["save_checkpoint", "load_training_state"]



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
    tensors = read_model_tensors(ckpt / MODEL_FILE)
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
