"""Augmented views for the frozen-feature cache: seeded random shifts of each frame (DrQ / Diffusion Policy style).

A per-frame token cache removes the random-crop augmentation image policies rely on; caching ``K`` shifted views
of every frame and training on one view per window restores it. View 0 is the frame itself (what evaluation and
deployment encode online); views 1..K-1 pad the frame by ``shift`` pixels (replicating its edge pixels) and crop it
back to the original size at a random offset in ``[0, 2 * shift]`` per axis, so the content moves by up to
``shift`` pixels in each direction (a random shift may also land on the identity, as in DrQ).

``shift`` is in pixels of the *stored* images (e.g. 4 px on 96 px frames, about DrQ's 4 px on 84 px); the encoder
then resizes to its own input size, so the shift in encoder pixels scales with that ratio. Offsets are a pure
function of ``(seed, frame index)`` (each frame draws its own, independently of its neighbours and of the batch
it was encoded in), so a rerun or a resumed cache writes identical views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_SHIFT = 4  # px of the stored image; DrQ / Diffusion Policy pad-and-crop by 4 px on 84-96 px images


@dataclass(frozen=True)
class AugmentSpec:
    """``views`` (K >= 2) cached views per frame, shifted by up to ``shift`` px (>= 1), drawn from ``seed``."""

    views: int
    shift: int = DEFAULT_SHIFT
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("views", 2), ("shift", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"augment_{name} must be an integer >= {low}, got {value!r}")

    @property
    def key_suffix(self) -> str:
        """What the feature key gains: ``_aug<K>sh<shift>sd<seed>``."""
        return f"_aug{self.views}sh{self.shift}sd{self.seed}"

    def attrs(self) -> dict[str, int]:
        """The ``augment`` attrs of the feature set (also what training matches a requested set against, and what
        ``feature_cache.cache_command`` turns into the cache overrides)."""
        return {"views": int(self.views), "shift": int(self.shift), "seed": int(self.seed)}


def augment_spec(views: int | None, shift: int | None = None, seed: int | None = 0) -> AugmentSpec | None:
    """The spec for ``views`` augmented views, or None for ``views`` None or 1 (the plain cache: no view axis).

    ``shift`` None: :data:`DEFAULT_SHIFT`. Bad values (``views`` < 1, ``shift`` < 1, ``seed`` < 0, non-integers)
    raise ValueError naming the option, also when ``views`` is 1.
    """
    if views is None:
        return None
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise ValueError(f"augment_views must be an integer >= 1 (1: no augmented views), got {views!r}")
    spec = AugmentSpec(2, DEFAULT_SHIFT if shift is None else shift, 0 if seed is None else seed)  # validates
    return None if int(views) == 1 else AugmentSpec(int(views), spec.shift, spec.seed)


def view_offsets(spec: AugmentSpec, frames: np.ndarray) -> np.ndarray:
    """Crop offsets int64 (B, K, 2) as (dy, dx) into the padded frame for global frame indices ``frames`` (B,).

    View 0 is ``(shift, shift)`` (the frame itself); views 1..K-1 are uniform in ``[0, 2 * shift]``, drawn from
    ``numpy.random.default_rng([seed, frame])``.
    """
    s = int(spec.shift)
    out = np.full((len(frames), spec.views, 2), s, dtype=np.int64)
    for i, t in enumerate(np.asarray(frames, dtype=np.int64)):
        out[i, 1:] = np.random.default_rng([int(spec.seed), int(t)]).integers(0, 2 * s + 1, size=(spec.views - 1, 2))
    return out


def shifted_views(images: np.ndarray, offsets: np.ndarray, shift: int) -> np.ndarray:
    """Pad-and-crop views of uint8 frames (B, H, W, C) at ``offsets`` (B, K, 2) -> (B * K, H, W, C), frame-major.

    Frames are edge-padded by ``shift`` px (replicate padding) and cropped back to (H, W); an offset of
    ``(shift, shift)`` returns the frame unchanged (bit-exact).
    """
    b, h, w = images.shape[:3]
    k = offsets.shape[1]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    src = np.repeat(np.arange(b), k)
    dy, dx = offsets.reshape(-1, 2).T
    rows = dy[:, None] + np.arange(h)[None]  # (B*K, H)
    cols = dx[:, None] + np.arange(w)[None]  # (B*K, W)
    return padded[src[:, None, None], rows[:, :, None], cols[:, None, :]]
