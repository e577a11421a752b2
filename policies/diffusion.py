"""Diffusion Policy on conditioning tokens: DDPM training, DDIM sampling (diffusers schedulers).

Training: ``DDPMScheduler`` (default 100 steps, ``squaredcos_cap_v2``, epsilon prediction, ``clip_sample``) noises
the normalised action window (B, horizon, A); the denoiser (1-D conditional U-Net with FiLM, or a transformer)
predicts the noise given the diffusion step and the observation tokens; loss is MSE.
Inference: ``DDIMScheduler`` built from the same config runs ``num_inference_steps`` deterministic (eta = 0)
steps from Gaussian noise drawn row-wise (per-row generators when given); the executed chunk is
``[n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)`` of the denoised horizon.

How the U-Net's denoising steps are computed at inference (speed only, same weights, eps within float32 rounding):
``denoiser_engine`` (:func:`set_denoiser_engine`, the eval/deploy ``engine`` key) ``auto`` runs them through
OpenVINO on the CPU where it is installed (:class:`~s2robot.encoders.engine.EngineRunner`: converted on the first
chunk, ~2 s, and again after the weights change; compiled for each new batch size, ~0.1 s), in PyTorch otherwise.
Opt-in for long-lived inference (deployment, long evaluations): :func:`set_compiled_denoiser` runs the denoiser
through ``torch.compile``, which then takes precedence.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from s2robot.encoders.engine import EngineRunner, check_engine, openvino_unavailable_reason, require_openvino
from s2robot.policies.action_queue import check_ensemble_coefficient
from s2robot.policies.base import BasePolicy, ShapeMeta, randn_rows
from s2robot.policies.transformer_denoiser import TransformerDenoiser
from s2robot.policies.unet1d import ConditionalUnet1D, FilmStep

__all__ = ["DiffusionConfig", "DiffusionPolicy", "set_inference_steps", "set_compiled_denoiser", "set_denoiser_engine"]

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DiffusionConfig:
    """Options of :class:`DiffusionPolicy` (the top level of ``configs/policy/diffusion_*.yaml``)."""

    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    # how eval/deploy execute the chunks: ACT temporal ensembling coefficient m, or null for whole chunks. m = 0 measured
    # on lift_cube (U-Net, 3 seeds): 145/150 vs 68/150 with whole chunks (docs/policies.md); costs a DDIM run per step
    temporal_ensemble: float | None = 0.0
    denoiser: str = "unet"  # "unet" | "transformer"
    num_train_timesteps: int = 100
    num_inference_steps: int = 10  # DDIM steps at inference
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    unet_down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])  # CPU-sized; [256, 512, 1024] on GPUs
    unet_kernel_size: int = 5
    unet_n_groups: int = 8
    step_embed_dim: int = 128
    tf_d_model: int = 256
    tf_layers: int = 8
    tf_heads: int = 4
    tf_dropout: float = 0.1
    tf_causal: bool = True

    def __post_init__(self) -> None:
        if self.denoiser not in ("unet", "transformer"):
            raise ValueError(f"policy.denoiser={self.denoiser!r} is not 'unet' or 'transformer'")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"policy.beta_schedule={self.beta_schedule!r} is not one of {BETA_SCHEDULES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"policy.prediction_type={self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        for name in ("horizon", "n_obs_steps", "n_action_steps", "num_train_timesteps", "num_inference_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy.{name} must be >= 1, got {getattr(self, name)}")
        self.temporal_ensemble = check_ensemble_coefficient(self.temporal_ensemble, "policy.temporal_ensemble")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"policy.num_inference_steps={self.num_inference_steps} exceeds "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        self.unet_down_dims = [int(d) for d in self.unet_down_dims]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiffusionPolicy(BasePolicy):
    def __init__(
        self, cfg: DiffusionConfig, shape_meta: ShapeMeta, obs_conditioner: nn.Module, normalizer: nn.Module
    ) -> None:
        super().__init__(shape_meta, obs_conditioner, normalizer, cfg.n_obs_steps, cfg.n_action_steps, cfg.horizon,
                         cfg.temporal_ensemble)
        self.cfg = cfg
        d = obs_conditioner.out_dim
        n_tokens = cfg.n_obs_steps * obs_conditioner.tokens_per_step
        if cfg.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(
                self.action_dim, n_tokens * d, cfg.horizon, cfg.unet_down_dims, cfg.unet_kernel_size,
                cfg.unet_n_groups, cfg.step_embed_dim,
            )
        else:
            self.denoiser = TransformerDenoiser(
                self.action_dim, d, cfg.horizon, n_tokens, cfg.tf_d_model, cfg.tf_layers, cfg.tf_heads,
                cfg.tf_dropout, cfg.tf_causal,
            )
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            clip_sample=cfg.clip_sample,
            prediction_type=cfg.prediction_type,
        )
        self.inference_scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        self.num_inference_steps = cfg.num_inference_steps
        # torch.compile'd ``denoiser.forward`` (set_compiled_denoiser) or None: a plain attribute, never a sub-module,
        # so the state dict is the same either way; dropped on pickling and deepcopy
        self.compiled_denoiser = None
        # how the U-Net's inference steps run ("auto", "torch", "fused" = torch, "openvino"; set_denoiser_engine) and
        # the OpenVINO runner built on first use: plain attributes, never in the state dict or a checkpoint
        self.denoiser_engine = "auto"
        self._denoiser_runner: EngineRunner | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["compiled_denoiser"] = None
        state["_denoiser_runner"] = None  # OpenVINO objects do not copy; rebuilt on use
        return state

    def denoiser_engine_in_use(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str:
        """How :meth:`denoise_chunk` computes the denoising steps now: "compile" (:func:`set_compiled_denoiser`),
        "openvino" (a U-Net in float32 on the CPU, ``denoiser_engine`` auto or openvino, OpenVINO importable) or
        "torch" (everything else: the transformer denoiser, CUDA, ``torch``/``fused``)."""
        if self.compiled_denoiser is not None:
            return "compile"
        param = next(self.denoiser.parameters())
        device, dtype = device or param.device, dtype or param.dtype
        if (self.denoiser_engine in ("auto", "openvino") and isinstance(self.denoiser, ConditionalUnet1D)
                and device.type == "cpu" and dtype == torch.float32 and openvino_unavailable_reason() is None):
            return "openvino"
        return "torch"

    def _film_step_runner(self, cond: torch.Tensor) -> EngineRunner | None:
        """The OpenVINO runner of one film-table U-Net step when that engine is in use, else None."""
        if self.denoiser_engine_in_use(cond.device, cond.dtype) != "openvino":
            return None
        if self._denoiser_runner is None:  # rebuilt by the runner when the weights change
            # one static model per batch size: at batch 1 a step ran 2x faster than with a dynamic batch
            self._denoiser_runner = EngineRunner(FilmStep(self.denoiser), "openvino", dynamic=None)
        return self._denoiser_runner

    def _cond(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encode_obs(obs).flatten(1, 2)  # (B, T_obs * M, d)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.action_window(batch)  # (B, H, A)
        tokens, state_loss = self.encode_obs_and_state_loss(batch)
        cond = tokens.flatten(1, 2)  # (B, T_obs * M, d), as _cond
        B = x0.shape[0]
        noise = torch.randn(x0.shape, device=x0.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (B,), device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.denoiser(noisy, t, cond)
        if self.cfg.prediction_type == "epsilon":
            target = noise
        elif self.cfg.prediction_type == "sample":
            target = x0
        else:
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(pred, target) + state_loss

    @torch.no_grad()
    def predict_action(
        self, obs: Mapping[str, torch.Tensor], generators: Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        return self.denoise_chunk(self._cond(obs), generators)

    @torch.no_grad()
    def denoise_chunk(self, cond: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """The executed action chunk (B, n_action_steps, A), unnormalised, from conditioning tokens
        ``cond`` (B, n_obs_steps * M, d): DDIM from Gaussian noise, as :meth:`predict_action` runs it."""
        B = cond.shape[0]
        sched = self.inference_scheduler
        if sched.num_inference_steps != self.num_inference_steps:
            sched.set_timesteps(self.num_inference_steps)  # CPU timesteps: the scheduler indexes CPU tables with them
        x = randn_rows((B, self.horizon, self.action_dim), generators, cond.device, cond.dtype)
        denoise = self.compiled_denoiser or self.denoiser
        film, runner = None, None
        if isinstance(self.denoiser, ConditionalUnet1D):  # every step's FiLM terms in one pass per chunk
            film = self.denoiser.film_tables(sched.timesteps.to(cond.device), cond)
            runner = self._film_step_runner(cond)
        for i, t in enumerate(sched.timesteps):
            if film is None:
                eps = denoise(x, t.to(cond.device).expand(B), cond)
            elif runner is not None:
                eps = runner(x, *[table[i] for table in film])
            else:
                eps = denoise(x, None, film=[table[i] for table in film])
            x = sched.step(eps, t, x).prev_sample  # eta = 0: deterministic given the initial noise
        start = self.n_obs_steps - 1
        return self.unnormalize_action(x[:, start : start + self.n_action_steps])


def _is_count_in(value: Any, limit: int) -> bool:
    """An integer (not a bool) in [1, limit]: the check of both inference-time counts below."""
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= limit


def set_inference_steps(policy: nn.Module, steps: int | None, key: str = "num_inference_steps") -> None:
    """Override a loaded policy's DDIM step count (``s2robot eval|deploy num_inference_steps=N``); None keeps the
    checkpoint's. Fewer steps cut the chunk latency about linearly; whether success holds is measured per task
    (docs/policies.md). Raises ValueError, naming ``key``, for a policy that does not denoise or a bad count."""
    if steps is None:
        return
    if not isinstance(policy, DiffusionPolicy):
        raise ValueError(f"{key}={steps}: only diffusion policies take denoising steps; this checkpoint holds a "
                         f"{type(policy).__name__}")
    limit = int(policy.noise_scheduler.config.num_train_timesteps)
    if not _is_count_in(steps, limit):
        raise ValueError(f"{key}={steps!r}: expected an integer in [1, {limit}] (the policy's num_train_timesteps)")
    policy.num_inference_steps = steps


def set_action_steps(policy: nn.Module, steps: int | None, key: str = "n_action_steps") -> None:
    """Override how many actions of each denoised horizon a loaded diffusion policy returns per chunk
    (``s2robot eval|deploy n_action_steps=K``); None keeps the checkpoint's. Only inference reads it: the denoiser
    learned the whole horizon, so any K in [1, horizon - n_obs_steps + 1] is valid, e.g. K = 8 with ACT ensembling
    for a push_t checkpoint trained to replan every step (configs/task_policy/push_t_diffusion_unet.yaml).
    Raises ValueError, naming ``key``, for a policy that does not denoise a horizon or a bad count."""
    if steps is None:
        return
    if not isinstance(policy, DiffusionPolicy):
        raise ValueError(f"{key}={steps}: only a diffusion policy's chunk length can change after training (it "
                         f"denoises the whole horizon); this checkpoint holds a {type(policy).__name__}, whose head "
                         f"predicts its trained {policy.n_action_steps} actions: use replan_every=k to execute fewer")
    limit = policy.horizon - policy.n_obs_steps + 1
    if not _is_count_in(steps, limit):
        raise ValueError(f"{key}={steps!r}: expected an integer in [1, {limit}] (horizon {policy.horizon} - "
                         f"n_obs_steps {policy.n_obs_steps} + 1)")
    policy.n_action_steps = steps


def set_compiled_denoiser(policy: nn.Module, enabled: bool, key: str = "compile_denoiser",
                          warm_up_batch: int | None = None) -> float:
    """Run a loaded diffusion policy's denoiser through ``torch.compile`` (inductor) at inference
    (``s2robot eval|deploy compile_denoiser=true``), or back in eager mode (``enabled=False``).

    The U-Net's denoising step at batch 1 is mostly per-operator overhead on a CPU (conv, GroupNorm, FiLM and Mish
    on 4-16 time steps); compiled, those fuse into a few kernels. The first call compiles (tens of seconds on a
    CPU; again once when the batch size first changes), so it pays in deployment and long evaluations, not in short
    ones (benchmarks/bench_policy.py ``--compile`` measures both). ``warm_up_batch=B`` compiles now, on zeros of
    the shapes a batch-B chunk uses, so that the first real chunk does not stall (deployment). The weights and the
    state dict are unchanged and actions equal eager ones within float32 rounding. Returns the warm-up's seconds
    (0 without one). Raises ValueError, naming ``key``, for a policy that does not denoise or a non-bool value."""
    if not isinstance(enabled, bool):
        raise ValueError(f"{key}={enabled!r}: expected true or false")
    if not enabled:
        if isinstance(policy, DiffusionPolicy):
            policy.compiled_denoiser = None
        return 0.0
    if not isinstance(policy, DiffusionPolicy):
        raise ValueError(f"{key}=true: only diffusion policies have a denoiser to compile; this checkpoint holds a "
                         f"{type(policy).__name__}")
    policy.compiled_denoiser = torch.compile(policy.denoiser.forward)
    if not warm_up_batch:
        return 0.0
    t0 = time.perf_counter()
    param = next(policy.denoiser.parameters())
    conditioner = policy.obs_conditioner
    with torch.inference_mode():  # one chunk on zero tokens: the denoiser calls predict_action makes, compiled
        policy.denoise_chunk(torch.zeros(warm_up_batch, policy.n_obs_steps * conditioner.tokens_per_step,
                                         conditioner.out_dim, device=param.device, dtype=param.dtype))
    return time.perf_counter() - t0


def set_denoiser_engine(policy: nn.Module, engine: str | None) -> str | None:
    """Compute a loaded diffusion policy's U-Net denoising steps with ``engine`` (the engines of
    :mod:`s2robot.encoders.engine`: "auto" = OpenVINO on the CPU where installed, else PyTorch; "torch" and "fused"
    = PyTorch; "openvino"); None keeps the policy's. Speed only: the same weights, eps within float32 rounding.
    Returns the engine now in use ("torch", "openvino", "compile"), None for a policy that does not denoise.
    Raises ValueError (one line naming the engine) for an unknown engine or "openvino" where it cannot run."""
    if not isinstance(policy, DiffusionPolicy):
        return None
    if engine is not None:
        engine = check_engine(str(engine))
        if engine == "openvino":
            require_openvino(next(policy.denoiser.parameters()).device, "the policy")
        policy.denoiser_engine = engine
    return policy.denoiser_engine_in_use()
