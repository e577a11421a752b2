"""Tokens of observation-history frames, each frame encoded once.

A policy conditioned on the last ``T = n_obs_steps`` frames re-encodes every frame of its window in every forward
when it is given raw images: ``T`` times per frame when it replans every step (``n_action_steps = 1``, temporal
ensembling). :class:`FrameTokenCache` sits in front of the frozen encoder: given the windows of raw frames a
forward needs, it returns their tokens as ``"<cam>_tokens"`` (B, T, N, D) — which policies take in place of
``"<cam>_image"`` — encoding in one batched call only the frames it has not encoded recently. Frames are
recognised by content (a BLAKE2b digest of their bytes, ~20 us for a 96 px frame), so callers keep their raw-image
histories as they are and need no bookkeeping: padding of a fresh history with its first frame, and a static
scene, cost one encode.

The tokens are those of ``encode`` (for a policy: :func:`frozen_token_encoder`, its conditioner's
``encode_images``, which pools and rounds exactly as the feature cache), so the policy gets the inputs the raw
images would give; only the number of encoder calls changes. Not thread-safe: use it from one thread (e.g. the
inference worker).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["FrameTokenCache", "frozen_token_encoder"]

Encode = Callable[[torch.Tensor], torch.Tensor]


def frozen_token_encoder(policy) -> Encode | None:
    """The policy's frames -> tokens function when its image encoder is frozen, else None.

    A policy qualifies when ``policy.obs_conditioner`` has a ``token_encoder`` with ``trainable == "frozen"`` and an
    ``encode_images(uint8 (n, H, W, 3)) -> (n, N, D)`` (:class:`s2robot.policies.conditioning.ObsConditioner`).
    Trainable encoders (their tokens change with the weights) and image backbones do not.
    """
    cond = getattr(policy, "obs_conditioner", None)
    enc = getattr(cond, "token_encoder", None)
    if enc is None or getattr(enc, "trainable", None) != "frozen" or not hasattr(cond, "encode_images"):
        return None
    return cond.encode_images


def _digest(frame: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((frame.shape, frame.dtype.str)).encode())
    h.update(np.ascontiguousarray(frame).data)
    return h.digest()


class FrameTokenCache:
    """Raw-frame windows -> ``"<cam>_tokens"``, encoding each distinct frame once while it stays cached.

    Args:
        encode: uint8 frames (n, H, W, 3) on ``device`` -> tokens (n, N, D).
        capacity: most frames kept (least recently used dropped first). Size it to every frame the next forwards
            can reuse: rows x n_obs_steps x cameras (the default, 64, covers 8 envs x 2 steps x 2 cameras twice).
        device: where frames are encoded and tokens kept.
    """

    def __init__(self, encode: Encode, capacity: int = 64, device: str | torch.device = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"FrameTokenCache capacity must be >= 1, got {capacity}")
        self.encode, self.capacity, self.device = encode, int(capacity), torch.device(device)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # digest -> tokens (N, D)
        self.frames_encoded = 0  # frames sent through ``encode`` (tests, benchmarks)
        self.frames_seen = 0  # frames asked for

    def clear(self) -> None:
        """Forget every cached frame (e.g. when the encoder's weights change)."""
        self._cache.clear()

    def tokens(self, images: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"<cam>_image": uint8 (B, T, H, W, 3)}`` -> ``{"<cam>_tokens": (B, T, N, D)}`` on ``device``.

        Frames not cached are encoded in one call (all keys together; every key must have one frame size).
        """
        digests: dict[str, list[bytes]] = {}
        missing: dict[bytes, np.ndarray] = {}
        for key, arr in images.items():
            if not key.endswith("_image"):
                raise ValueError(f"FrameTokenCache.tokens takes '<cam>_image' keys, got {key!r}")
            arr = arr.numpy() if torch.is_tensor(arr) else np.asarray(arr)
            if arr.dtype != np.uint8 or arr.ndim != 5 or arr.shape[-1] != 3:
                raise ValueError(f"{key!r} must be uint8 (B, T, H, W, 3), got {arr.dtype} {tuple(arr.shape)}")
            flat = arr.reshape(-1, *arr.shape[2:])
            digests[key] = [_digest(f) for f in flat]
            for d, f in zip(digests[key], flat):
                if d not in self._cache and d not in missing:
                    missing[d] = f
        self.frames_seen += sum(len(v) for v in digests.values())
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            with torch.inference_mode():
                out = self.encode(torch.from_numpy(np.stack(list(missing.values()))).to(self.device))
            fresh = dict(zip(missing, out))
            self.frames_encoded += len(missing)
        result = {}
        for key, ds in digests.items():
            toks = [fresh[d] if d in fresh else self._cache[d] for d in ds]
            B, T = np.shape(images[key])[:2]
            result[key[: -len("_image")] + "_tokens"] = torch.stack(toks).reshape(B, T, *toks[0].shape)
        for ds in digests.values():  # most recently used last; drop the oldest beyond capacity
            for d in ds:
                self._cache[d] = fresh[d] if d in fresh else self._cache[d]
                self._cache.move_to_end(d)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return result
