"""Device selection and the CUDA-only speed features (autocast, pinned memory, compile)."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> ``cuda`` when available else ``cpu``; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!s} requested but CUDA is not available on this machine")
    return dev


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context on CPU (CPU runs stay in float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pin_if_cuda(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pin host memory only when the tensor is headed to a CUDA device."""
    return t.pin_memory() if device.type == "cuda" and t.device.type == "cpu" else t
