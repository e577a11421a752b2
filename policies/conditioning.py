"""Observation conditioning: per-camera S2 tokens (or images) + proprio -> conditioning tokens.

Per camera and time step the input is a token set (N, D) — cached ``"<cam>_tokens"`` or ``"<cam>_image"`` frames
sent through the frozen encoder held here (under ``torch.no_grad``; an encoder built with ``trainable="norm"`` or
``"last_k:<k>"`` is fine-tuned instead, and never matches a feature cache). A pooler maps the set to K vectors of width
``d_model``:

- ``"attention"``: K learned queries cross-attend to the projected tokens (+ learned position embedding).
- ``"transformer"``: a small pre-norm transformer over [K learned queries; tokens]; the K query outputs are kept.
- ``"mean"``: the baseline that drops the spatial grid — mean over the grid tokens, then LayerNorm + Linear (K=1).
- ``"keypoints"``: robomimic's ``SpatialSoftmax`` over the square token grid (prefix tokens dropped): a 1x1
  projection of the LayerNorm-ed tokens to ``num_keypoints`` heat maps, each turned into its expected (x, y) in
  [-1, 1], then Linear(2 * num_keypoints -> K * d_model). Sub-cell positions, for fine (stride-8/16) token maps.

Proprio becomes one more token, and so does the optional privileged ``state`` (object poses, goal). The output is
(B, T_obs, M, d_model) with M = n_cameras * K + [proprio] + [state]. With ``estimate_state`` an image policy
predicts the state from its camera and proprio tokens (an MLP, output in the normaliser's units) and the estimate
takes the state's place as the last token: training supervises it with the store's ``state`` (see
:meth:`ObsConditioner.encode`), inference needs no state. A policy may have no cameras at all (a
state-only policy, the control-only upper bound of a task). Poolers are shared across cameras (plus a learned camera embedding) or separate,
by ``share_cameras``.

The trainable baseline (``backbone="resnet18"``) replaces encoder + pooler with robomimic's ResNet18Conv +
SpatialSoftmax (GroupNorm, crop randomisation), one vector (K=1) per camera; see ``resnet_baseline.py``.

Online encoding turns tokens into what the cache stores with the same function the cache uses
(:func:`s2robot.tokens.tokens_as_cached`: grid pooling, rounding to the cache dtype, the cache's fixed PCA channel
reduction when it stored reduced tokens), so cached and online inputs give the same outputs for the same frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from s2robot.device import autocast_for
from s2robot.policies.base import ShapeMeta
from s2robot.policies.resnet_baseline import ResNetImageEncoder, robomimic_spatial_softmax
from s2robot.tokens import CACHE_DTYPES, TokenProjection, tokens_as_cached

__all__ = ["ConditioningConfig", "ObsConditioner", "TokenPooler"]

POOLINGS = ("attention", "transformer", "mean", "keypoints")
BACKBONES = ("tokens", "resnet18")


@dataclass
class ConditioningConfig:
    """Options of :class:`ObsConditioner` (``policy.obs`` in the hydra config)."""

    backbone: str = "tokens"  # "tokens": frozen encoder tokens / cached features; "resnet18": trainable baseline
    pooling: str = "attention"  # "attention" | "transformer" | "mean" | "keypoints"
    num_queries: int = 4  # K learned queries per camera (attention / transformer); K output tokens (keypoints)
    num_keypoints: int = 32  # spatial-softmax keypoints per camera (keypoints)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2  # token-transformer depth
    dropout: float = 0.0
    share_cameras: bool = True
    cache_dtype: str = "float16"  # online tokens are rounded to this dtype, as the feature cache stores them
    # image policies: predict the privileged state (object poses) from the camera + proprio features and condition
    # on that estimate as a state policy conditions on the state; trained against the store's ``state`` (an
    # auxiliary loss weighted by state_loss_weight), never read at inference
    estimate_state: bool = False
    state_loss_weight: float = 1.0
    # trainable ResNet-18 baseline
    crop_ratio: float = 0.9  # random crop (train) / centre crop (eval) of this fraction of H and W
    resnet_num_kp: int = 32
    resnet_gn_group_size: int = 16  # GroupNorm with channels // 16 groups replaces BatchNorm

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"policy.obs.backbone={self.backbone!r} is not one of {BACKBONES}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"policy.obs.pooling={self.pooling!r} is not one of {POOLINGS}")
        for name in ("num_queries", "num_keypoints", "d_model", "n_heads", "n_layers", "resnet_num_kp",
                     "resnet_gn_group_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy.obs.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"policy.obs.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"policy.obs.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ValueError(f"policy.obs.crop_ratio must be in (0, 1], got {self.crop_ratio}")
        if not (math.isfinite(float(self.state_loss_weight)) and float(self.state_loss_weight) >= 0.0):
            raise ValueError(f"policy.obs.state_loss_weight must be a finite number >= 0, got {self.state_loss_weight}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"policy.obs.cache_dtype={self.cache_dtype!r} is not one of {CACHE_DTYPES}")

    @property
    def tokens_per_camera(self) -> int:
        return 1 if self.pooling == "mean" or self.backbone == "resnet18" else self.num_queries

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Block(nn.Module):
    """Pre-norm feed-forward residual block used after cross-attention."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TokenPooler(nn.Module):
    """(B, N, D) tokens -> (B, K, d_model) conditioning vectors (see module docstring for the modes)."""

    def __init__(self, cfg: ConditioningConfig, num_tokens: int, token_dim: int, num_prefix: int = 0) -> None:
        super().__init__()
        self.mode = cfg.pooling
        self.num_prefix = int(num_prefix)
        d = cfg.d_model
        self.norm_in = nn.LayerNorm(token_dim)
        if self.mode == "keypoints":
            self._init_keypoints(cfg, num_tokens, token_dim)
            return
        self.proj = nn.Linear(token_dim, d)
        if self.mode == "mean":
            return
        self.pos = nn.Parameter(torch.randn(1, num_tokens, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_queries, d) * 0.02)
        if self.mode == "attention":
            self.q_norm = nn.LayerNorm(d)
            self.kv_norm = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
            self.ff = _Block(d, cfg.dropout)
        else:
            layer = nn.TransformerEncoderLayer(
                d, cfg.n_heads, 4 * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(d)

    def _init_keypoints(self, cfg: ConditioningConfig, num_tokens: int, token_dim: int) -> None:
        side = int(round((num_tokens - self.num_prefix) ** 0.5))
        if side * side != num_tokens - self.num_prefix or side < 2:
            raise ValueError(f"policy.obs.pooling=keypoints needs a square token grid of at least 2x2, got "
                             f"{num_tokens - self.num_prefix} grid tokens (+{self.num_prefix} prefix)")
        self.side, self.num_out = side, cfg.num_queries
        self.keypoints = robomimic_spatial_softmax(input_shape=(token_dim, side, side), num_kp=cfg.num_keypoints)
        self.kp_proj = nn.Linear(2 * cfg.num_keypoints, cfg.num_queries * cfg.d_model)
        self.norm_out = nn.LayerNorm(cfg.d_model)

    def _pool_keypoints(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P + s*s, D) -> (B, K, d_model): expected (x, y) of each keypoint's heat map, projected."""
        grid = self.norm_in(tokens[:, self.num_prefix :])
        B, _, D = grid.shape
        kp = self.keypoints(grid.transpose(1, 2).reshape(B, D, self.side, self.side))  # (B, num_kp, 2)
        return self.norm_out(self.kp_proj(kp.flatten(1)).view(B, self.num_out, -1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.mode == "keypoints":
            return self._pool_keypoints(tokens)
        if self.mode == "mean":
            grid = tokens[:, self.num_prefix :] if tokens.shape[1] > self.num_prefix else tokens
            return self.proj(self.norm_in(grid.mean(dim=1, keepdim=True)))
        x = self.proj(self.norm_in(tokens)) + self.pos
        q = self.queries.expand(x.shape[0], -1, -1)
        if self.mode == "attention":
            attn, _ = self.attn(self.q_norm(q), self.kv_norm(x), self.kv_norm(x), need_weights=False)
            out = self.ff(q + attn)
        else:
            out = self.transformer(torch.cat([q, x], dim=1))[:, : q.shape[1]]
        return self.norm_out(out)


class ObsConditioner(nn.Module):
    """Observation dict -> conditioning tokens (B, T, M, d_model).

    ``token_encoder``: the token encoder (``build_encoder`` output) used for ``"<cam>_image"`` inputs; may be None
    when only cached tokens are fed. It is kept in eval mode; with ``trainable="frozen"`` (the default) it gets no
    gradients, with ``trainable="norm" | "last_k:<k>"`` those parameters train.
    ``camera_encoders``: one module per camera (one shared with ``share_cameras``) turning that camera's input into
    K feature tokens (B*T, K, d_model): a :class:`TokenPooler` over S2 tokens (``backbone="tokens"``) or a
    :class:`~s2robot.policies.resnet_baseline.ResNetImageEncoder` over raw images (``backbone="resnet18"``).
    """

    def __init__(self, cfg: ConditioningConfig, shape_meta: ShapeMeta, token_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.cameras = list(shape_meta.cameras)
        self.use_proprio = shape_meta.proprio_dim > 0
        self.token_pool_grid = shape_meta.token_pool_grid
        self.num_prefix = int(shape_meta.num_prefix)
        self.cache_dtype = getattr(torch, cfg.cache_dtype)
        d = cfg.d_model
        self.token_encoder = None
        if not self.cameras:
            self.camera_encoders = nn.ModuleList()
        elif cfg.backbone == "tokens":
            if token_encoder is not None:
                token_encoder.eval()
                if getattr(token_encoder, "trainable", "frozen") == "frozen":
                    token_encoder.requires_grad_(False)
                # else: build_encoder(trainable="norm" | "last_k:<k>") chose which parameters train
                self.token_encoder = token_encoder
            if shape_meta.token_shape is None:
                raise ValueError("backbone='tokens' needs shape_meta.token_shape (N, D) from the encoder or the cache")
            N, D = shape_meta.token_shape
            n_nets = 1 if cfg.share_cameras else len(self.cameras)
            self.camera_encoders = nn.ModuleList(TokenPooler(cfg, N, D, self.num_prefix) for _ in range(n_nets))
        else:
            if shape_meta.image_shape is None:
                raise ValueError("backbone='resnet18' needs shape_meta.image_shape (H, W, 3)")
            n_nets = 1 if cfg.share_cameras else len(self.cameras)
            self.camera_encoders = nn.ModuleList(
                ResNetImageEncoder(shape_meta.image_shape, d, cfg.crop_ratio, cfg.resnet_num_kp, cfg.resnet_gn_group_size)
                for _ in range(n_nets)
            )
        reduce = shape_meta.token_reduce
        if reduce:  # the cache's fixed channel projection, applied to live frames (filled by training)
            self.register_buffer("token_proj_mean", torch.zeros(int(reduce["in_dim"])))
            self.register_buffer("token_proj_components", torch.zeros(int(reduce["dim"]), int(reduce["in_dim"])))
        self.token_reduced = bool(reduce)
        self.camera_embed = nn.Parameter(torch.zeros(len(self.cameras), 1, d)) if cfg.share_cameras else None
        self.proprio_proj = (
            nn.Sequential(nn.Linear(shape_meta.proprio_dim, d), nn.LayerNorm(d)) if self.use_proprio else None
        )
        state_dim = self._state_size(cfg, shape_meta)
        self.use_state = state_dim > 0
        self.state_proj = nn.Sequential(nn.Linear(state_dim, d), nn.LayerNorm(d)) if self.use_state else None
        n_seen = len(self.cameras) * cfg.tokens_per_camera + int(self.use_proprio)  # what the estimate is made from
        self.state_estimator = (
            nn.Sequential(nn.Flatten(1), nn.Linear(n_seen * d, 4 * d), nn.GELU(), nn.Linear(4 * d, state_dim))
            if cfg.estimate_state else None
        )
        self.tokens_per_step = n_seen + int(self.use_state)
        if self.tokens_per_step == 0:
            raise ValueError("the policy has no inputs: no cameras, no proprio and no state")

    @staticmethod
    def _state_size(cfg: ConditioningConfig, meta: ShapeMeta) -> int:
        """Width of the state token's input: the state read (``state_dim``) or estimated (``estimated_state_dim``)."""
        if cfg.estimate_state != (meta.estimated_state_dim > 0):
            raise ValueError(f"policy.obs.estimate_state={cfg.estimate_state} but shape_meta.estimated_state_dim="
                             f"{meta.estimated_state_dim}: training sets both from the store's 'state'")
        if cfg.estimate_state and (meta.state_dim or not meta.cameras):
            raise ValueError("policy.obs.estimate_state predicts the state from camera images: it needs cameras and "
                             "a policy that does not also read the state (task.env_kwargs.state_obs=false)")
        return meta.state_width

    @property
    def out_dim(self) -> int:
        return self.cfg.d_model

    def set_token_projection(self, projection: TokenProjection) -> None:
        """Store the cache's channel projection (training copies it from the feature set it trains on)."""
        if not self.token_reduced:
            raise ValueError("this policy was built for unreduced tokens (shape_meta.token_reduce is None)")
        self.token_proj_mean.copy_(projection.mean)
        self.token_proj_components.copy_(projection.components)

    @property
    def token_projection(self) -> TokenProjection | None:
        if not self.token_reduced:
            return None
        return TokenProjection(self.token_proj_mean, self.token_proj_components)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) frames -> tokens (B, N', D') exactly as the feature cache stores them, as float32.

        Encode (bf16 autocast on CUDA only), then :func:`s2robot.tokens.tokens_as_cached`, the function the cache
        uses: grid pooling, rounding to the cache dtype, the cache's PCA channel reduction when it made one.
        """
        if self.token_encoder is None:
            raise RuntimeError("this policy has no frozen encoder; feed '<cam>_tokens' (cached features) instead")
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.token_encoder.parameters())
        with torch.set_grad_enabled(grad), autocast_for(images.device):
            tokens = self.token_encoder.encode(images)
        grid = int(self.token_encoder.grid)
        return tokens_as_cached(tokens, num_prefix=self.num_prefix, grid=grid,
                                pool_grid=int(self.token_pool_grid) if self.token_pool_grid else None,
                                projection=self.token_projection, dtype=self.cfg.cache_dtype).float()

    def _camera_tokens(self, obs: Mapping[str, torch.Tensor], B: int, T: int) -> list[torch.Tensor]:
        """Per camera (B*T, N, D) tokens; all image cameras go through the encoder in one batched call."""
        out: dict[str, torch.Tensor] = {}
        to_encode = []
        for cam in self.cameras:
            if f"{cam}_tokens" in obs:
                out[cam] = obs[f"{cam}_tokens"].reshape(B * T, *obs[f"{cam}_tokens"].shape[2:]).float()
            elif f"{cam}_image" in obs:
                to_encode.append(cam)
            else:
                raise KeyError(f"observation needs '{cam}_tokens' or '{cam}_image'; got {sorted(obs)}")
        if to_encode:
            frames = torch.cat([obs[f"{c}_image"].reshape(B * T, *obs[f"{c}_image"].shape[2:]) for c in to_encode])
            tokens = self.encode_images(frames).split(B * T)
            out.update(zip(to_encode, tokens))
        return [out[c] for c in self.cameras]

    def _camera_images(self, obs: Mapping[str, torch.Tensor], B: int, T: int) -> list[torch.Tensor]:
        imgs = []
        for cam in self.cameras:
            key = f"{cam}_image"
            if key not in obs:
                raise KeyError(f"the resnet18 baseline needs raw images {key!r}; got {sorted(obs)}")
            imgs.append(obs[key].reshape(B * T, *obs[key].shape[2:]))
        return imgs

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs with (B, T, ...) entries (proprio already normalised) -> (B, T, M, d_model)."""
        return self.encode(obs)[0]

    def encode(self, obs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """obs -> (conditioning tokens (B, T, M, d_model), state estimate (B, T, S) in normalised units or None).

        The estimate exists with ``estimate_state``; :meth:`BasePolicy.encode_obs_and_state_loss` compares it with
        the normalised true state.
        """
        ref = next((v for k, v in obs.items() if k.endswith(("_tokens", "_image")) or k in ("proprio", "state")), None)
        if ref is None:
            raise KeyError(f"observation has no '<cam>_tokens', '<cam>_image', 'proprio' or 'state' entry; "
                           f"got {sorted(obs)}")
        B, T = ref.shape[:2]
        if not self.cameras:
            per_cam = []
        elif self.cfg.backbone == "tokens":
            per_cam = self._camera_tokens(obs, B, T)
        else:
            per_cam = self._camera_images(obs, B, T)
        if not per_cam:
            feats = ref.new_zeros((B * T, 0, self.cfg.d_model), dtype=torch.float32)
        elif self.cfg.share_cameras:
            C = len(per_cam)
            feats = self.camera_encoders[0](torch.cat(per_cam))  # (C*B*T, K, d): one batched call for all cameras
            feats = feats.reshape(C, B * T, *feats.shape[1:]) + self.camera_embed[:, None]
            feats = feats.permute(1, 0, 2, 3).reshape(B * T, -1, self.cfg.d_model)
        else:
            feats = torch.cat([pool(x) for pool, x in zip(self.camera_encoders, per_cam)], dim=1)
        feats = self._add_lowdim(feats, obs, "proprio", self.proprio_proj, B * T)
        estimate = None
        if self.state_estimator is not None:
            estimate = self.state_estimator(feats)  # (B*T, S)
            feats = torch.cat([feats, self.state_proj(estimate)[:, None]], dim=1)
        else:
            feats = self._add_lowdim(feats, obs, "state", self.state_proj, B * T)
        tokens = feats.reshape(B, T, self.tokens_per_step, self.cfg.d_model)
        return tokens, (None if estimate is None else estimate.reshape(B, T, -1))

    @staticmethod
    def _add_lowdim(feats: torch.Tensor, obs: Mapping[str, torch.Tensor], key: str, proj: nn.Module | None,
                    rows: int) -> torch.Tensor:
        """feats (B*T, n, d) + one token projected from ``obs[key]`` (B, T, dim) when the policy reads ``key``."""
        if proj is None:
            return feats
        if key not in obs:
            raise KeyError(f"observation needs {key!r} (B, T_obs, ...); got {sorted(obs)}")
        return torch.cat([feats, proj(obs[key].reshape(rows, -1).float())[:, None]], dim=1)
