"""Channel-reduced feature sets: PCA of cached S2 tokens, fitted once at cache time and stored beside them.

S2 concatenates scales along channels (MobileNetV2 S2 (1, 2): 2560 channels per token), and a policy's first layer
projects every token to a small width anyway. Reducing the channels once with a fixed PCA makes every training
batch ~10x smaller to gather and the first layer ~10x cheaper, which is most of a cached-token training step on a
CPU (``benchmarks/bench_policy.py``).

``features/<key>_pca<K>`` holds the reduced tokens float16 (T, N, K) per camera, with attrs copied from the source
set plus ``reduce = {method, dim, source, explained_variance, fit_tokens}``, and ``projection/mean`` (D,) and
``projection/components`` (K, D) float32 so a policy can apply the same projection to live frames
(:func:`s2robot.tokens.tokens_as_cached`). The key depends on the source key and K, and the fit is deterministic
(a fixed, seeded sample of tokens of every camera), so a rerun reproduces the same set.

A source set with augmented views (float16 (T, V, N, D), ``augment`` attrs, :mod:`.view_augment`) gives a reduced
set (T, V, N, K) with the same attrs: the PCA is fitted once, on view 0 (the un-augmented frames, the same sample
of frames as for the plain set), and applied to every view.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from zarr.codecs import BloscCodec

from s2robot.tokens import TokenProjection, fit_pca, tokens_as_cached

from .store import DatasetError, EpisodeStore, StoreLike, describe

FIT_TOKENS = 200_000  # tokens sampled (over all cameras) for the PCA fit
TOKEN_CODEC = dict(cname="lz4", clevel=1, shuffle="shuffle", typesize=2)


def reduced_key(source_key: str, dim: int) -> str:
    return f"{source_key}_pca{int(dim)}"


def load_projection(group: Any) -> TokenProjection | None:
    """The ``projection`` stored in a reduced ``features/<key>`` group, or None for an unreduced set."""
    if "projection" not in group:
        return None
    proj = group["projection"]
    return TokenProjection(torch.from_numpy(np.asarray(proj["mean"][...])),
                           torch.from_numpy(np.asarray(proj["components"][...])))


def _view0(tokens: np.ndarray, has_views: bool) -> np.ndarray:
    """(F, N, D) tokens, from (F, V, N, D) ones when the set has augmented views."""
    return tokens[:, 0] if has_views else tokens


def set_is_complete(feats: Any, key: str, cams: list[str], n: int) -> bool:
    """Whether ``features/<key>`` (``feats``: the ``features`` group) holds all ``n`` frames of every camera."""
    if key not in feats:
        return False
    done = feats[key].attrs.get("progress", {})
    return all(int(done.get(c, 0)) >= n for c in cams)


def fit_rows(n: int, n_tok: int, n_cams: int, seed: int) -> np.ndarray:
    """The sorted frame indices whose tokens (every camera's, view 0) fit the PCA: ``FIT_TOKENS`` tokens in all,
    a seeded sample, so the encode-and-reduce path (:func:`~s2robot.datasets.feature_cache.cache_features`) and
    :func:`reduce_features` fit on the same frames."""
    frames_per_cam = max(1, min(n, FIT_TOKENS // (n_tok * n_cams)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=frames_per_cam, replace=False))


def fit_projection(samples: list[np.ndarray], dim: int) -> tuple[TokenProjection, float, int]:
    """PCA of cached (float16) tokens, one (F, N, D) array per camera -> (projection, explained variance, tokens)."""
    flat = torch.cat([torch.from_numpy(np.asarray(x).astype(np.float32)).reshape(-1, x.shape[-1]) for x in samples])
    if not torch.isfinite(flat).all():
        raise DatasetError("cached tokens hold non-finite values; rerun `s2robot cache` (delete the feature set)")
    proj, explained = fit_pca(flat, dim)
    return proj, explained, int(flat.shape[0])


def _fit(feats: Any, cams: list[str], n: int, dim: int, seed: int, has_views: bool = False
         ) -> tuple[TokenProjection, float, int]:
    rows = fit_rows(n, int(feats[cams[0]].shape[-2]), len(cams), seed)
    return fit_projection([_view0(np.asarray(feats[c].get_orthogonal_selection((rows,))), has_views)
                           for c in cams], dim)


def reduced_attrs(source_attrs: dict[str, Any], source_key: str, dim: int, seed: int, explained: float,
                  n_fit: int) -> dict[str, Any]:
    """The attrs of a reduced set: its source's (progress excluded), ``out_dim`` and the ``reduce`` record."""
    attrs = {k: v for k, v in source_attrs.items() if k != "progress"}
    attrs["out_dim"] = int(dim)
    attrs["reduce"] = {"method": "pca", "dim": int(dim), "source": source_key, "seed": int(seed),
                       "explained_variance": explained, "fit_tokens": n_fit}
    return attrs


def create_reduced_group(feats: Any, key: str, attrs: dict[str, Any], proj: TokenProjection) -> Any:
    """``features/<key>`` with its attrs (progress empty) and ``projection/{mean, components}``."""
    group = feats.create_group(key, attributes={**attrs, "progress": {}})
    pg = group.create_group("projection")
    pg.create_array("mean", data=proj.mean.numpy())
    pg.create_array("components", data=proj.components.numpy())
    return group


def reduce_features(path: StoreLike, source_key: str, dim: int, seed: int = 0, batch_frames: int = 512,
                    progress: bool = True) -> str:
    """Write ``features/<source_key>_pca<dim>`` from the complete feature set ``source_key``; returns its key.

    An existing complete reduced set is kept as is (nothing recomputed).
    """
    from tqdm.auto import tqdm

    store = EpisodeStore.open(path, mode="a")
    try:
        if "features" not in store.group or source_key not in store.group["features"]:
            raise DatasetError(f"{describe(store.path)}: no features/{source_key} to reduce; run `s2robot cache` first")
        src = store.group["features"][source_key]
        n = store.n_steps
        cams = sorted(name for name, _ in src.arrays())
        progress_src = src.attrs.get("progress", {})
        unfinished = [c for c in cams if int(progress_src.get(c, 0)) < n]
        if unfinished:
            raise DatasetError(f"{describe(store.path)}: features/{source_key} is incomplete for {unfinished}; "
                               "finish `s2robot cache` before reducing it")
        d = int(src[cams[0]].shape[-1])
        has_views = bool(src.attrs.get("augment"))
        if not 1 <= int(dim) < d:
            raise DatasetError(f"token_dim must be in [1, {d}) for features/{source_key} (D={d}), got {dim}")
        key = reduced_key(source_key, dim)
        feats = store.group["features"]
        if set_is_complete(feats, key, cams, n):
            return key
        proj, explained, n_fit = _fit(src, cams, n, int(dim), seed, has_views)
        attrs = reduced_attrs(dict(src.attrs), source_key, int(dim), seed, explained, n_fit)
        if key in feats:
            del feats[key]  # an interrupted earlier write: redo it (seconds)
        group = create_reduced_group(feats, key, attrs, proj)
        frame_shape = (*src[cams[0]].shape[1:-1], int(dim))  # (N, dim) or (V, N, dim)
        with tqdm(total=n * len(cams), desc=f"reduce {key}", unit="frame", disable=not progress) as bar:
            for c in cams:
                out = group.create_array(c, shape=(n, *frame_shape), dtype="float16", chunks=(1, *frame_shape),
                                         compressors=BloscCodec(**TOKEN_CODEC), fill_value=0)
                for s in range(0, n, batch_frames):
                    x = torch.from_numpy(np.asarray(src[c][s:s + batch_frames]))
                    y = tokens_as_cached(x, num_prefix=0, grid=0, projection=proj, dtype="float16")
                    out[s:s + len(x)] = y.numpy()
                    bar.update(len(x))
                group.attrs["progress"] = {**group.attrs.get("progress", {}), c: n}
        return key
    finally:
        store.close()
