"""The frozen S2 encoder module shared by every backbone family, plus checkpoint-file helpers.

A *backbone adapter* is an ``nn.Module`` mapping normalised tiles (n, 3, s, s) to tokens (n, p + g*g, C) or
maps (n, C, g, g), with attributes ``num_prefix_tokens`` (p), ``embed_dim`` (C), ``grid`` (g at the base input
size), ``blocks`` (a sequence of the trunk's blocks/stages, for ``trainable="last_k:<k>"``) and ``final_norm``
(for ``trainable="norm"``). :class:`S2Encoder` turns any adapter into the project's encoder API.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from s2robot.encoders.engine import EngineRunner, check_engine, resolve_engine
from s2robot.s2 import plan_scales, s2_forward

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Bump when the encode() pipeline changes in a way that changes outputs (invalidates cached features).
PIPELINE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------- files
@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a checkpoint's content (a file, or every file of a directory by relative path).

    Digests are cached per (path, size, mtime), so a re-build does not re-read multi-GB files.
    """
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return _digest_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{checkpoint_digest(f)}\0".encode())
        return h.hexdigest()
    raise FileNotFoundError(f"checkpoint not found: {path}")


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights file without pickle execution: ``.safetensors`` via safetensors, else ``torch.load``
    with ``weights_only=True`` (``.pth``/``.pt``/``.bin``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    obj = torch.load(str(p), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    return obj


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error message that names the file and the offending keys."""
    missing, unexpected = [], []
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        raise ValueError(
            f"{source} does not match the model: missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, shape mismatches {shape[:8]}"
        )
    module.load_state_dict(state, strict=True)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run model construction with CPU RNG seeded to ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------------------- trainable
def parse_trainable(mode: str) -> tuple[str, int]:
    """``"frozen"`` -> ("frozen", 0); ``"norm"`` -> ("norm", 0); ``"last_k:3"`` -> ("last_k", 3)."""
    if mode in ("frozen", "norm"):
        return mode, 0
    if isinstance(mode, str) and mode.startswith("last_k:"):
        try:
            k = int(mode.split(":", 1)[1])
        except ValueError:
            k = -1
        if k >= 1:
            return "last_k", k
    raise ValueError(f"trainable must be 'frozen', 'norm' or 'last_k:<k>' with k >= 1, got {mode!r}")


def apply_trainable(adapter: nn.Module, mode: str) -> None:
    """Freeze everything, then unfreeze the final norm (``norm``) or the last k blocks plus final norm."""
    kind, k = parse_trainable(mode)
    adapter.requires_grad_(False)
    if kind == "frozen":
        return
    norm = getattr(adapter, "final_norm", None)
    if norm is None or not any(True for _ in norm.parameters()):
        raise ValueError(f"trainable={mode!r}: this backbone has no final norm with parameters")
    norm.requires_grad_(True)
    if kind == "last_k":
        blocks = list(adapter.blocks)
        if k > len(blocks):
            raise ValueError(f"trainable={mode!r} but the backbone has only {len(blocks)} blocks")
        for b in blocks[-k:]:
            b.requires_grad_(True)


def _tile_grid(adapter: nn.Module, tile: tuple[int, int], input_size: int) -> int:
    """Feature-grid side of one (square) tile: the adapter's own grid at its input size, else probed once."""
    if tile == (input_size, input_size):
        return int(adapter.grid)
    with torch.no_grad():
        out = adapter(torch.zeros(1, 3, *tile))
    if out.dim() == 4:
        return int(out.shape[-1])
    n = out.shape[1] - int(adapter.num_prefix_tokens)
    return int(round(n ** 0.5))


# --------------------------------------------------------------------------------------------------------- encoder
class S2Encoder(nn.Module):
    """Frozen (or partly trainable) backbone + its resize/normalisation + the S2 multiscale forward.

    ``encode(images)``: uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> float32 (B, N, D) with
    D = C * len(scales) and N = num_prefix + grid**2 (prefix first). ``grid`` is the token grid of the scale
    ``grid_scale`` indexes (0: the base scale, as in the S2 paper; -1: the largest scale, a finer grid with the
    coarser scales' maps repeated onto it); every scale's stitched map is area-resized to it.

    ``engine`` (:mod:`s2robot.encoders.engine`) picks how a frozen backbone is computed ("auto", "torch",
    "fused", "openvino"); it changes speed, not tokens (beyond float32 rounding), so it is in neither ``config``
    nor ``config_hash``. ``engine_in_use`` says which one runs on the encoder's current device.
    """

    def __init__(
        self,
        adapter: nn.Module,
        *,
        config: dict[str, Any],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scales: Sequence[float],
        max_split_size: int | None,
        trainable: str,
        use_prefix: bool,
        digest: str | None,
        hash_extra: dict[str, Any] | None = None,
        max_batch: int | None = None,
        device: str | torch.device = "cpu",
        engine: str = "auto",
        grid_scale: int = 0,
    ) -> None:
        super().__init__()
        self.engine = check_engine(engine)
        self._runner: EngineRunner | None = None  # built lazily; a plain attribute, never a sub-module
        if not scales:
            raise ValueError("scales must be a non-empty sequence")
        self.adapter = adapter
        self.input_size = int(input_size)
        self.scales = tuple(float(s) if not float(s).is_integer() else int(s) for s in scales)
        self.max_split_size = max_split_size
        self.trainable = trainable
        self.use_prefix = bool(use_prefix)
        self.max_batch = max_batch
        self._config = dict(config)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        plan = plan_scales(self.input_size, self.scales, None, max_split_size)
        if getattr(adapter, "fixed_size", True):
            bad = [t for t in plan.tile_sizes if t != (self.input_size, self.input_size)]
            if bad:
                raise ValueError(
                    f"scales {list(self.scales)} with max_split_size={max_split_size} give tiles {bad}, but this "
                    f"backbone only takes {self.input_size}x{self.input_size} inputs: use integer scales and "
                    f"max_split_size equal to input_size"
                )
        self.num_prefix_model = int(adapter.num_prefix_tokens)
        self.num_prefix = self.num_prefix_model if self.use_prefix else 0
        n_scales = len(plan.sizes)
        if isinstance(grid_scale, bool) or not isinstance(grid_scale, int) or not -n_scales <= grid_scale < n_scales:
            raise ValueError(f"grid_scale must be an index into scales {list(self.scales)} (0: the base grid, "
                             f"-1: the largest scale's), got {grid_scale!r}")
        self.grid_scale = grid_scale % n_scales  # -1 and the last index name the same grid (and hash)
        g = self.grid_scale
        self.grid = plan.splits[g][0] * _tile_grid(adapter, plan.tile_sizes[g], self.input_size)
        self.out_dim = int(adapter.embed_dim) * len(self.scales)
        self.num_tokens = self.num_prefix + self.grid * self.grid
        apply_trainable(adapter, trainable)
        payload = {
            "pipeline": PIPELINE_VERSION,
            "name": config["name"],
            "checkpoint_sha256": digest,
            "scales": list(self.scales),
            "input_size": self.input_size,
            "max_split_size": max_split_size,
            "trainable": trainable,
            "use_prefix": self.use_prefix,
            "num_prefix": self.num_prefix,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            **(hash_extra or {}),
        }
        if self.grid_scale:  # only then: the hashes (names of cached features) of base-grid encoders stay as they were
            payload["grid_scale"] = self.grid_scale
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        self.config_hash = hashlib.sha256(blob).hexdigest()[:16]
        self.to(device)
        self.eval()

    # -- module state --------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The ``build_encoder`` kwargs that rebuild this encoder (device excluded)."""
        return json.loads(json.dumps(self._config))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def engine_in_use(self) -> str:
        """The engine ``encode`` uses now ("torch", "fused" or "openvino"): ``engine`` resolved for the device."""
        return resolve_engine(self.engine, self.adapter, self.trainable, self.device)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        """Loading weights (also ``assign=True``, also through a parent module) drops the compiled engine."""
        self._runner = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Pickling/deepcopy drop the compiled engine (OpenVINO objects do not copy); it is rebuilt on use."""
        state = self.__dict__.copy()
        state["_runner"] = None
        return state

    def train(self, mode: bool = True) -> "S2Encoder":
        """Stays in eval mode: frozen statistics (BatchNorm, dropout) whatever the trainable mode."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, scales={list(self.scales)}, grid={self.grid} "
                f"(scale index {self.grid_scale}), "
                f"num_prefix={self.num_prefix}, out_dim={self.out_dim}, trainable={self.trainable!r}, "
                f"config_hash={self.config_hash}")

    # -- forward ---------------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> normalised float32 (B, 3, s, s) on device."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must be 4-D: uint8 (B, H, W, 3) or float (B, 3, H, W); got {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            if x.shape[-1] != 3:
                raise ValueError(f"uint8 images must be channels-last (B, H, W, 3), got {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
        elif x.is_floating_point():
            if x.shape[1] != 3:
                raise ValueError(f"float images must be channels-first (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
            x = x.float()
            if x.numel() and (x.amin() < -1e-3 or x.amax() > 1.0 + 1e-3):
                raise ValueError("float images must lie in [0, 1] (pass uint8 for 0..255 pixel values)")
        else:
            raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def encode(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Multiscale tokens float32 (B, num_tokens, out_dim); gradients flow only if not frozen."""
        x = self.preprocess(images)
        engine = self.engine_in_use
        fast = engine != "torch"  # the engines' CPU forms of the S2 glue too (same tokens within rounding)
        model = self.adapter
        if fast:
            if self._runner is None or self._runner.engine != engine:
                self._runner = EngineRunner(self.adapter, engine)
            model, x = self._runner, x.contiguous()  # contiguous: the fast bicubic kernel for the upscaled tiles
        grad = torch.no_grad() if self.trainable == "frozen" else contextlib.nullcontext()
        with grad:
            tokens = s2_forward(model, x, scales=self.scales, max_split_size=self.max_split_size,
                                num_prefix=self.num_prefix_model, output="tokens", max_batch=self.max_batch,
                                output_index=self.grid_scale,
                                batch_scales=fast, fast_resize=fast, channels_last=fast)
        if self.num_prefix_model and not self.use_prefix:
            tokens = tokens[:, self.num_prefix_model:]
        return tokens.float()

    forward = encode


def warn_random(name: str, seed: int) -> None:
    warnings.warn(f"encoder {name!r} built without a checkpoint: random weights (seed {seed})", stacklevel=3)
