"""Policies: shapes, loss decrease, seeding, per-row generators, cached-vs-online equality, config errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from policy_testlib import one_torch_thread  # noqa: F401  (autouse fixture)
from policy_testlib import ACTION, CAMERAS, IMG, PROPRIO, TINY_ENCODER, TINY_POLICIES, make_store
from s2robot.policies.normalizer import Normalizer
from s2robot.policies import ShapeMeta, build_policy

B = 3


@pytest.fixture(scope="module")
def encoder():
    from s2robot.encoders import build_encoder

    return build_encoder(**TINY_ENCODER)


@pytest.fixture(scope="module")
def meta(encoder):
    return ShapeMeta(cameras=list(CAMERAS), proprio_dim=PROPRIO, action_dim=ACTION, image_shape=[IMG, IMG, 3],
                     token_shape=[encoder.num_tokens, encoder.out_dim], num_prefix=encoder.num_prefix)


def fitted_normalizer(action_scale: float = 1.0, action_shift: float = 0.0) -> Normalizer:
    """Fitted on fixed data; ``action_scale``/``action_shift`` map the action data (so its units) affinely."""
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(200, ACTION, generator=g) * 3 + 1
    return Normalizer().fit({"action": actions * action_scale + action_shift,
                             "proprio": torch.randn(200, PROPRIO, generator=g)})


@pytest.fixture(scope="module")
def normalizer():
    return fitted_normalizer()


def token_batch(meta: ShapeMeta, horizon: int, T: int, seed: int = 0, batch: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    N, D = meta.token_shape
    out = {f"{c}_tokens": torch.randn(batch, T, N, D, generator=g) for c in meta.cameras}
    out["proprio"] = torch.randn(batch, T, PROPRIO, generator=g)
    out["action"] = torch.randn(batch, horizon, ACTION, generator=g)
    return out


def make(name: str, meta, normalizer, encoder=None, seed: int = 0, **over):
    torch.manual_seed(seed)
    cfg = copy.deepcopy(TINY_POLICIES[name])
    cfg.update(over)
    return build_policy(cfg, meta, normalizer, encoder)


@pytest.mark.parametrize("name", sorted(TINY_POLICIES))
def test_shapes_loss_and_action_units(name, meta, normalizer):
    policy = make(name, meta, normalizer)
    batch = token_batch(meta, policy.horizon, policy.n_obs_steps)
    loss = policy.compute_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for _, p in policy.trainable_named_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    policy.eval()
    obs = {k: v for k, v in batch.items() if k != "action"}
    act = policy.predict_action(obs)
    assert act.shape == (B, policy.n_action_steps, ACTION)
    assert torch.isfinite(act).all()
    # longer histories are cut to the last n_obs_steps
    long = {k: torch.cat([v[:, :1], v], dim=1) for k, v in obs.items()}
    if name != "bc_gmm":  # (bc_gmm samples)
        torch.testing.assert_close(policy.predict_action(long, [torch.Generator().manual_seed(i) for i in range(B)]),
                                   policy.predict_action(obs, [torch.Generator().manual_seed(i) for i in range(B)]))
    assert policy.obs_keys == ["front_image", "wrist_image", "proprio"]
    # action units: the same network with the action data in other units (x10 + 5) predicts x10 + 5, so
    # predict_action un-normalises with the fitted action statistics (it does not return the head's [-1, 1] values)
    rescaled = make(name, meta, fitted_normalizer(10.0, 5.0)).eval()

    def predict(p):
        torch.manual_seed(7)
        return p.predict_action(obs, [torch.Generator().manual_seed(i) for i in range(B)])

    base = predict(policy)
    torch.testing.assert_close(predict(rescaled), base * 10.0 + 5.0, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(TINY_POLICIES))
def test_loss_decreases_on_a_tiny_dataset(name, meta, normalizer):
    policy = make(name, meta, normalizer)
    batch = token_batch(meta, policy.horizon, policy.n_obs_steps, batch=8)
    opt = torch.optim.AdamW([p for _, p in policy.trainable_named_parameters()], lr=3e-3)

    def eval_loss() -> float:
        with torch.random.fork_rng():
            torch.manual_seed(123)
            return float(np.mean([float(policy.compute_loss(batch).detach()) for _ in range(4)]))

    before = eval_loss()
    for _ in range(40):
        opt.zero_grad()
        policy.compute_loss(batch).backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def test_same_seed_same_policy_and_loss(meta, normalizer):
    a = make("diffusion_unet", meta, normalizer, seed=5)
    b = make("diffusion_unet", meta, normalizer, seed=5)
    c = make("diffusion_unet", meta, normalizer, seed=6)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    batch = token_batch(meta, a.horizon, a.n_obs_steps)
    torch.manual_seed(1)
    la = a.compute_loss(batch)
    torch.manual_seed(1)
    assert torch.equal(la, b.compute_loss(batch))


@pytest.mark.parametrize("name", ["diffusion_unet", "diffusion_transformer", "bc_gmm"])
def test_generators_make_rows_independent_of_batch(name, meta, normalizer):
    """Row i's action depends only on its own generator: same in a batch of 3 and alone; other seeds differ."""
    policy = make(name, meta, normalizer).eval()
    batch = token_batch(meta, policy.horizon, policy.n_obs_steps)
    obs = {k: v for k, v in batch.items() if k != "action"}
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = policy.predict_action(obs, gens([10, 11, 12]))
    alone = policy.predict_action({k: v[1:2] for k, v in obs.items()}, gens([11]))
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-5)
    again = policy.predict_action(obs, gens([10, 11, 12]))
    torch.testing.assert_close(full, again)
    other = policy.predict_action(obs, gens([20, 11, 12]))
    assert not torch.allclose(other[0], full[0])
    torch.testing.assert_close(other[1:], full[1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one per row"):
        policy.predict_action(obs, gens([1]))


@pytest.mark.parametrize("pool_grid,grid_scale", [(None, 0), (2, 0), (None, -1)])
def test_cached_tokens_and_online_encoding_agree(tmp_path, encoder, normalizer, pool_grid, grid_scale):
    """The same frames through the feature cache or through the policy's frozen encoder give the same outputs
    (also with the largest S2 scale's finer token grid, ``grid_scale=-1``)."""
    from s2robot.datasets.feature_cache import cache_features
    from s2robot.datasets.sampler import SequenceDataset
    from s2robot.encoders import build_encoder

    if grid_scale:
        encoder = build_encoder(**{**encoder.config, "grid_scale": grid_scale})
        assert encoder.grid == 8

    path = make_store(tmp_path / "d.zarr", episodes=2, length=10)
    key = cache_features(path, encoder, batch_size=7, pool_grid=pool_grid, device="cpu", progress=False)
    keys = ["front_image", "wrist_image", "proprio"]
    kw = dict(horizon=8, n_obs_steps=2, n_action_steps=4, obs_keys=keys, split="all")
    cached = SequenceDataset(path, feature_hash=key, **kw)
    online = SequenceDataset(path, **kw)
    idx = [0, 3, 5, 9]
    bc, bo = cached.get_batch(idx), online.get_batch(idx)
    assert "front_tokens" in bc and "front_image" in bo
    n_tok = encoder.num_prefix + (pool_grid or encoder.grid) ** 2
    meta = ShapeMeta(cameras=list(CAMERAS), proprio_dim=PROPRIO, action_dim=ACTION, image_shape=[IMG, IMG, 3],
                     token_shape=[n_tok, encoder.out_dim], num_prefix=encoder.num_prefix, token_pool_grid=pool_grid)
    for name in ("diffusion_unet", "bc_mlp"):
        policy = make(name, meta, normalizer, encoder).eval()
        torch.testing.assert_close(policy.encode_obs(bc), policy.encode_obs(bo), atol=1e-6, rtol=1e-6)
        gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(idx))]  # noqa: E731
        torch.testing.assert_close(policy.predict_action(bc, gens()), policy.predict_action(bo, gens()),
                                   atol=1e-5, rtol=1e-5)
        torch.manual_seed(0)
        lc = policy.compute_loss(bc)
        torch.manual_seed(0)
        torch.testing.assert_close(lc, policy.compute_loss(bo), atol=1e-6, rtol=1e-6)
    with pytest.raises(KeyError, match="front_tokens' or 'front_image"):
        policy.encode_obs({k: v for k, v in bc.items() if not k.startswith("front")})


def test_frozen_encoder_gets_no_gradient_and_stays_eval(meta, normalizer, encoder):
    policy = make("bc_mlp", meta, normalizer, encoder)
    policy.train()
    enc = policy.obs_conditioner.token_encoder
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert all(not n.startswith("obs_conditioner.token_encoder.") for n, _ in policy.trainable_named_parameters())
    g = torch.Generator().manual_seed(0)
    batch = {f"{c}_image": torch.randint(0, 256, (2, 2, IMG, IMG, 3), dtype=torch.uint8, generator=g) for c in CAMERAS}
    batch.update(proprio=torch.randn(2, 2, PROPRIO, generator=g), action=torch.randn(2, policy.horizon, ACTION))
    policy.compute_loss(batch).backward()
    assert all(p.grad is None for p in enc.parameters())


def test_pooling_variants_and_separate_cameras(meta, normalizer):
    for pooling, K in (("mean", 1), ("attention", 3), ("transformer", 3), ("keypoints", 3)):
        for share in (True, False):
            obs = dict(TINY_POLICIES["bc_mlp"]["obs"], pooling=pooling, num_queries=3, share_cameras=share)
            policy = make("bc_mlp", meta, normalizer, obs=obs)
            batch = token_batch(meta, policy.horizon, 2)
            cond = policy.encode_obs(batch)
            assert cond.shape == (B, 2, len(CAMERAS) * K + 1, 16)
            assert len(policy.obs_conditioner.camera_encoders) == (1 if share else len(CAMERAS))


def _blob_tokens(pos: torch.Tensor, side: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """(B, 2) positions in cells -> (B, side*side, dim) noisy tokens, a bilinearly splatted blob in channel 0."""
    B = pos.shape[0]
    grid = torch.randn(B, side, side, dim, generator=g) * 0.1
    lo = pos.floor()
    frac, lo = pos - lo, lo.long()  # (B, 2): the blob's cell (row, column) and its offset within it
    for row, w_row in ((lo[:, 0], 1 - frac[:, 0]), (lo[:, 0] + 1, frac[:, 0])):
        for col, w_col in ((lo[:, 1], 1 - frac[:, 1]), (lo[:, 1] + 1, frac[:, 1])):
            grid[torch.arange(B), row, col, 0] += 4 * w_row * w_col
    return grid.reshape(B, side * side, dim)


def test_keypoints_pooling_locates_within_a_cell():
    """Spatial-softmax keypoints read an object's position between token centres; the grid-free mean pooler cannot."""
    from s2robot.policies.conditioning import ConditioningConfig, TokenPooler

    side, dim = 6, 8
    errors = {}
    for pooling in ("keypoints", "mean"):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        cfg = ConditioningConfig(pooling=pooling, d_model=16, num_queries=1, num_keypoints=4)
        pooler = TokenPooler(cfg, side * side, dim)
        head = torch.nn.Linear(16, 2)
        opt = torch.optim.Adam([*pooler.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(600):
            pos = torch.rand(64, 2, generator=g) * (side - 1.001)
            loss = ((head(pooler(_blob_tokens(pos, side, dim, g))[:, 0]) - pos) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        pos = torch.rand(256, 2, generator=g) * (side - 1.001)
        with torch.no_grad():
            errors[pooling] = ((head(pooler(_blob_tokens(pos, side, dim, g))[:, 0]) - pos) ** 2).mean().sqrt().item()
    assert errors["keypoints"] < 0.25, errors  # a quarter of a cell
    assert errors["mean"] > 1.0, errors  # ~1.4 cells: the spread of the positions
    with pytest.raises(ValueError, match="square token grid"):
        TokenPooler(ConditioningConfig(pooling="keypoints"), 10, dim)


def test_resnet18_baseline_groupnorm_and_crops(normalizer):
    size = 72  # crop 64 -> a 2x2 ResNet-18 map, the smallest on which spatial softmax is informative
    meta = ShapeMeta(cameras=list(CAMERAS), proprio_dim=PROPRIO, action_dim=ACTION, image_shape=[size, size, 3])
    policy = make("bc_mlp", meta, normalizer, obs=dict(backbone="resnet18", d_model=16, crop_ratio=64 / size))
    mods = list(policy.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mods)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in mods)
    g = torch.Generator().manual_seed(0)
    obs = {f"{c}_image": torch.randint(0, 256, (2, 2, size, size, 3), dtype=torch.uint8, generator=g) for c in CAMERAS}
    obs["proprio"] = torch.randn(2, 2, PROPRIO, generator=g)
    policy.train()
    torch.manual_seed(0)
    a = policy.encode_obs(obs)
    torch.manual_seed(1)
    b = policy.encode_obs(obs)
    assert not torch.allclose(a, b)  # random crops in training
    policy.eval()
    torch.testing.assert_close(policy.encode_obs(obs), policy.encode_obs(obs))  # centre crop in eval
    assert policy.predict_action(obs).shape == (2, policy.n_action_steps, ACTION)
    with pytest.raises(KeyError, match="raw images"):
        policy.encode_obs({"front_tokens": torch.zeros(2, 2, 17, 64), "proprio": obs["proprio"]})
    small = ShapeMeta(cameras=["front"], proprio_dim=0, action_dim=ACTION, image_shape=[32, 32, 3])
    with pytest.raises(ValueError, match="at least 64 px"):
        make("bc_mlp", small, normalizer, obs=dict(backbone="resnet18", d_model=16))


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(type="gan"), "policy.type"),
        (dict(obs=dict(pooling="max")), "policy.obs.pooling"),
        (dict(obs=dict(num_keypoints=0)), "policy.obs.num_keypoints"),
        (dict(obs=dict(d_model=15, n_heads=2)), "divisible"),
        (dict(obs=dict(colour=1)), "unknown key"),
        (dict(horizon=9), "divisible by 2"),
        (dict(num_inference_steps=500), "num_inference_steps"),
        (dict(prediction_type="x0"), "prediction_type"),
        (dict(n_action_steps=9), "horizon=8 is too short"),
        (dict(lr=1.0), "unknown key"),
        (dict(temporal_ensemble=-0.5), r"policy.temporal_ensemble=-0.5: expected a finite number m >= 0"),
    ],
)
def test_bad_policy_config_is_a_clear_error(over, match, meta, normalizer):
    with pytest.raises(ValueError, match=match):
        make("diffusion_unet", meta, normalizer, **over)


def test_execution_default_is_part_of_the_policy(meta, normalizer):
    """BC and diffusion policies execute with ACT temporal ensembling m = 0 unless their config says otherwise; the
    value reaches the policy (and so the checkpoint's config and ``execution_for``)."""
    from s2robot.policies.action_queue import execution_for

    assert make("bc_mlp", meta, normalizer).temporal_ensemble == 0.0
    assert make("diffusion_unet", meta, normalizer).temporal_ensemble == 0.0
    assert make("diffusion_unet", meta, normalizer, temporal_ensemble=None).temporal_ensemble is None
    assert make("bc_mlp", meta, normalizer, temporal_ensemble=None).temporal_ensemble is None
    policy = make("diffusion_unet", meta, normalizer, temporal_ensemble=0.25)
    assert execution_for(policy) == 0.25 and execution_for(policy, "off") is None and execution_for(policy, 0) == 0.0


def test_missing_observation_keys_are_named(meta, normalizer):
    policy = make("bc_mlp", meta, normalizer).eval()
    batch = token_batch(meta, policy.horizon, 2)
    with pytest.raises(KeyError, match="proprio"):
        policy.predict_action({k: v for k, v in batch.items() if k not in ("proprio", "action")})
    with pytest.raises(ValueError, match="n_obs_steps=2"):
        policy.predict_action({k: v[:, :1] for k, v in batch.items() if k != "action"})
    with pytest.raises(ValueError, match="batch\\['action'\\]"):
        policy.compute_loss({**batch, "action": batch["action"][:, :3]})


def test_ddim_step_count_is_configurable_at_inference(meta, normalizer):
    policy = make("diffusion_unet", meta, normalizer).eval()
    obs = {k: v for k, v in token_batch(meta, policy.horizon, 2).items() if k != "action"}
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(B)]  # noqa: E731
    a5 = policy.predict_action(obs, gens())
    policy.num_inference_steps = 2
    a2 = policy.predict_action(obs, gens())
    assert len(policy.inference_scheduler.timesteps) == 2 and not torch.allclose(a2, a5)
    policy.num_inference_steps = 5
    torch.testing.assert_close(policy.predict_action(obs, gens()), a5)


def test_compiled_denoiser_matches_eager_and_leaves_the_weights_alone(meta, normalizer):
    """``set_compiled_denoiser`` (eval/deploy ``compile_denoiser=true``) gives the eager actions within float32
    rounding, changes no state-dict key, is dropped by deepcopy and can be switched off; its warm-up compiles the
    graph the chunks then use (no compile in the first real chunk); a BC policy is refused."""
    import copy

    from torch._dynamo.utils import counters

    from s2robot.policies.diffusion import set_compiled_denoiser

    policy = make("diffusion_unet", meta, normalizer).eval()
    obs = {k: v for k, v in token_batch(meta, policy.horizon, 2).items() if k != "action"}
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(B)]  # noqa: E731
    keys = list(policy.state_dict())
    with torch.inference_mode():
        eager = policy.predict_action(obs, gens())
        assert set_compiled_denoiser(policy, True, warm_up_batch=B) > 0
        assert policy.compiled_denoiser is not None and list(policy.state_dict()) == keys
        graphs = counters["stats"]["unique_graphs"]
        torch.testing.assert_close(policy.predict_action(obs, gens()), eager, atol=1e-5, rtol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs  # the warm-up compiled what the chunk ran
    assert copy.deepcopy(policy).compiled_denoiser is None
    set_compiled_denoiser(policy, False)
    assert policy.compiled_denoiser is None
    with pytest.raises(ValueError, match=r"^compile_denoiser=true: only diffusion policies have a denoiser to compile; "
                                         r"this checkpoint holds a BCPolicy$"):
        set_compiled_denoiser(make("bc_mlp", meta, normalizer), True)
    with pytest.raises(ValueError, match=r"^compile_denoiser='yes': expected true or false$"):
        set_compiled_denoiser(policy, "yes")


def test_partly_trainable_encoder_is_fine_tuned(meta, normalizer):
    from s2robot.encoders import build_encoder

    enc = build_encoder(**dict(TINY_ENCODER, trainable="norm"))
    policy = make("bc_mlp", meta, normalizer, enc)
    trainable = [n for n, _ in policy.trainable_named_parameters() if n.startswith("obs_conditioner.token_encoder.")]
    assert trainable and all("norm" in n for n in trainable)
    g = torch.Generator().manual_seed(0)
    batch = {f"{c}_image": torch.randint(0, 256, (2, 2, IMG, IMG, 3), dtype=torch.uint8, generator=g) for c in CAMERAS}
    batch.update(proprio=torch.randn(2, 2, PROPRIO, generator=g), action=torch.randn(2, policy.horizon, ACTION))
    policy.compute_loss(batch).backward()
    params = dict(policy.named_parameters())
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in trainable)


def test_resume_restores_a_partly_trainable_encoder(tmp_path, meta, normalizer):
    """load_training_state restores fine-tuned encoder weights (saved in encoder.safetensors, not model.safetensors)."""
    from s2robot.encoders import build_encoder
    from s2robot.training.checkpoint import load_training_state, save_checkpoint

    policy = make("bc_mlp", meta, normalizer, build_encoder(**dict(TINY_ENCODER, trainable="norm")))
    names = [n for n, _ in policy.trainable_named_parameters() if n.startswith("obs_conditioner.token_encoder.")]
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(1.0)  # as if fine-tuned
    save_checkpoint(tmp_path / "step_1", policy, {}, step=1, epoch=0)
    fresh = make("bc_mlp", meta, normalizer, build_encoder(**dict(TINY_ENCODER, trainable="norm")))
    load_training_state(tmp_path / "step_1", fresh)
    restored = dict(fresh.named_parameters())
    for n in names:
        torch.testing.assert_close(restored[n], params[n], atol=0, rtol=0, msg=n)


def test_checkpoints_with_the_old_parameter_names_still_load(tmp_path, meta, normalizer):
    """Weights saved as obs_encoder.* / obs_encoder.poolers.* (before the renames) load into obs_conditioner.*."""
    from safetensors.torch import load_file, save_file

    from s2robot.policies.loading import MODEL_FILE, read_model_tensors
    from s2robot.training.checkpoint import load_training_state, save_checkpoint

    policy = make("bc_mlp", meta, normalizer)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)  # differ from a fresh build
    save_checkpoint(tmp_path / "step_1", policy, {}, step=1, epoch=0)
    path = tmp_path / "step_1" / MODEL_FILE
    legacy = {k.replace("obs_conditioner.camera_encoders.", "obs_encoder.poolers.")
               .replace("obs_conditioner.", "obs_encoder."): v for k, v in load_file(str(path)).items()}
    assert any(k.startswith("obs_encoder.poolers.") for k in legacy)
    save_file(legacy, str(path))
    assert set(read_model_tensors(path)) == set(policy.state_dict())
    fresh = make("bc_mlp", meta, normalizer, seed=1)
    load_training_state(tmp_path / "step_1", fresh)
    for (name, a), b in zip(policy.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_diffusion_policys_chunk_length_can_change_at_inference(meta, normalizer):
    """``set_action_steps`` (eval/deploy ``n_action_steps=K``): the denoised horizon is the same, only the returned
    slice changes, so K = 1 gives the first action of the K = 8 chunk from the same noise; K beyond the horizon,
    a non-integer and a BC policy (whose head predicts exactly its trained chunk) are one clear ValueError."""
    from s2robot.policies.diffusion import set_action_steps

    policy = make("diffusion_unet", meta, normalizer).eval()
    obs = {k: v for k, v in token_batch(meta, policy.horizon, 2).items() if k != "action"}
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(B)]  # noqa: E731
    chunk = policy.predict_action(obs, gens())
    limit = policy.horizon - policy.n_obs_steps + 1
    set_action_steps(policy, 1)
    torch.testing.assert_close(policy.predict_action(obs, gens()), chunk[:, :1])
    set_action_steps(policy, limit)
    longer = policy.predict_action(obs, gens())
    assert longer.shape[1] == limit and torch.allclose(longer[:, : chunk.shape[1]], chunk)
    set_action_steps(policy, None)
    assert policy.n_action_steps == limit
    for bad in (0, limit + 1, 2.5, True):
        with pytest.raises(ValueError, match=rf"^n_action_steps={bad!r}: expected an integer in \[1, {limit}\]"):
            set_action_steps(policy, bad)
    with pytest.raises(ValueError, match="only a diffusion policy's chunk length can change.*replan_every"):
        set_action_steps(make("bc_mlp", meta, normalizer), 2)


def test_estimated_state_is_learned_from_tokens_and_not_read_at_inference():
    """``policy.obs.estimate_state``: the conditioner predicts the state from the camera tokens, the policy conditions
    on that estimate, training supervises it with the batch's ``state``, inference needs no state."""
    side, dim, T = 6, 8, 2
    meta = ShapeMeta(cameras=["front"], proprio_dim=PROPRIO, action_dim=ACTION, token_shape=[side * side, dim],
                     estimated_state_dim=2)
    g = torch.Generator().manual_seed(0)
    norm = Normalizer().fit({"action": torch.randn(200, ACTION, generator=g),
                             "proprio": torch.randn(200, PROPRIO, generator=g),
                             "state": torch.rand(200, 2, generator=g) * (side - 1.001)})
    policy = make("diffusion_unet", meta, norm, obs=dict(TINY_POLICIES["diffusion_unet"]["obs"], pooling="keypoints",
                                                          num_queries=1, num_keypoints=4, estimate_state=True))
    assert "state" not in policy.obs_keys and policy.obs_conditioner.tokens_per_step == 3  # camera, proprio, estimate

    def batch(n: int) -> dict[str, torch.Tensor]:
        pos = torch.rand(n, 2, generator=g) * (side - 1.001)  # the "object" position, in cells, is the state
        tokens = _blob_tokens(pos.repeat_interleave(T, 0), side, dim, g).reshape(n, T, side * side, dim)
        return {"front_tokens": tokens, "proprio": torch.randn(n, T, PROPRIO, generator=g),
                "state": pos[:, None].expand(n, T, 2), "action": torch.randn(n, 8, ACTION, generator=g)}

    def estimate_error(b: dict[str, torch.Tensor]) -> float:  # RMS error in cells
        est = policy.estimate_state({k: v for k, v in b.items() if k != "state"})  # (n, T, 2), cells
        return (est - b["state"]).pow(2).mean().sqrt().item()

    held_out = batch(256)
    before = estimate_error(held_out)
    with_state_loss = policy.compute_loss(held_out).item()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(600):
        loss = policy.compute_loss(batch(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = estimate_error(held_out)
    # cells; positions spread over ~5 cells (~0.2 here; 2.2 with state_loss_weight=0)
    assert before > 1.0 and after < 0.35, (before, after)
    assert with_state_loss > policy.compute_loss(held_out).item()
    obs = {k: v for k, v in held_out.items() if k not in ("state", "action")}
    assert policy.predict_action(obs).shape == (256, 4, ACTION)  # no state needed
    with pytest.raises(KeyError, match="'state'"):
        policy.compute_loss({k: v for k, v in held_out.items() if k != "state"})
    with pytest.raises(ValueError, match="does not estimate the state"):
        make("diffusion_unet", meta_plain := ShapeMeta(cameras=["front"], proprio_dim=PROPRIO, action_dim=ACTION,
                                                        token_shape=[side * side, dim]), norm).estimate_state(obs)
    with pytest.raises(ValueError, match="estimate_state"):  # the config and the shape metadata must agree
        make("diffusion_unet", meta_plain, norm, obs=dict(estimate_state=True))
    with pytest.raises(ValueError, match="state_loss_weight"):
        make("diffusion_unet", meta, norm, obs=dict(estimate_state=True, state_loss_weight=float("nan")))
