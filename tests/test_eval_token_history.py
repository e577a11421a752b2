"""Each history frame is encoded once: ``FrameTokenCache`` alone, and inside the batched evaluator with a real
diffusion policy on the frozen test encoder replanning every step (n_obs_steps=2, n_action_steps=1)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from s2robot.encoders import build_encoder
from s2robot.encoders.history import FrameTokenCache, frozen_token_encoder
from test_eval_rollout import ToyEnvFactory  # the toy env (spawn workers import it by this module name)
from policy_testlib import TINY_POLICIES

torch.set_num_threads(1)


def _frames(b, t, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (b, t, size, size, 3), dtype=np.uint8)


class _Counting:
    """encode wrapper counting frames."""

    def __init__(self, encode):
        self.inner, self.frames = encode, 0

    def __call__(self, x):
        self.frames += x.shape[0]
        return self.inner(x)


def test_cache_tokens_equal_direct_encoding_and_encode_once():
    enc = build_encoder("vit_tiny_test")
    count = _Counting(enc.encode)
    cache = FrameTokenCache(count, capacity=16)
    a, b = _frames(2, 2, 0), _frames(2, 2, 1)
    out = cache.tokens({"front_image": a, "wrist_image": b})
    assert set(out) == {"front_tokens", "wrist_tokens"} and out["front_tokens"].shape == (2, 2, 17, 64)
    direct = enc.encode(torch.from_numpy(a.reshape(4, 8, 8, 3))).reshape(2, 2, 17, 64)
    assert torch.allclose(out["front_tokens"], direct, atol=1e-6)
    assert count.frames == 8 and cache.frames_encoded == 8
    # next step: each row's history moves by one frame -> only the 2 x 2 new frames are encoded
    a2 = np.concatenate([a[:, 1:], _frames(2, 1, 2)], axis=1)
    b2 = np.concatenate([b[:, 1:], _frames(2, 1, 3)], axis=1)
    out2 = cache.tokens({"front_image": a2, "wrist_image": b2})
    assert count.frames == 12
    assert torch.equal(out2["front_tokens"][:, 0], out["front_tokens"][:, 1])
    # a padded history (the first frame repeated) costs one encode per distinct frame
    cache.tokens({"front_image": np.repeat(_frames(1, 1, 9), 3, axis=1),
                  "wrist_image": np.repeat(_frames(1, 1, 10), 3, axis=1)})
    assert count.frames == 12 + 2


def test_cache_capacity_and_errors():
    enc = build_encoder("vit_tiny_test")
    count = _Counting(enc.encode)
    cache = FrameTokenCache(count, capacity=2)
    f = _frames(1, 3, 0)
    cache.tokens({"front_image": f})
    assert count.frames == 3 and len(cache._cache) == 2  # the least recently used frame was dropped
    cache.tokens({"front_image": f[:, 1:]})
    assert count.frames == 3  # the two newest are still held
    cache.tokens({"front_image": f[:, :1]})
    assert count.frames == 4  # the dropped one is encoded again
    with pytest.raises(ValueError, match="uint8 \\(B, T, H, W, 3\\)"):
        cache.tokens({"front_image": f[0]})
    with pytest.raises(ValueError, match="'<cam>_image' keys"):
        cache.tokens({"proprio": np.zeros((1, 2, 4), np.float32)})
    with pytest.raises(ValueError, match="capacity"):
        FrameTokenCache(count, capacity=0)


def _policy(trainable="frozen"):
    from s2robot.policies import ShapeMeta, build_policy
    from s2robot.policies.normalizer import Normalizer

    enc = build_encoder("vit_tiny_test", trainable=trainable)
    meta = ShapeMeta(cameras=["front", "wrist"], proprio_dim=6, action_dim=2, image_shape=[8, 8, 3],
                     token_shape=[enc.num_tokens, enc.out_dim], num_prefix=enc.num_prefix)
    rng = np.random.default_rng(0)
    norm = Normalizer().fit({"action": rng.uniform(-1, 1, (64, 2)), "proprio": rng.normal(size=(64, 6))})
    cfg = dict(copy.deepcopy(TINY_POLICIES["diffusion_unet"]), n_obs_steps=2, n_action_steps=1, horizon=4)
    torch.manual_seed(0)
    return build_policy(cfg, meta, norm, enc).eval()


def _evaluate(policy, token_history):
    from s2robot.evaluation import evaluate

    count = _Counting(policy.obs_conditioner.token_encoder.encode)
    policy.obs_conditioner.token_encoder.encode = count
    try:
        s = evaluate(policy, task="toy", n_envs=2, episodes=3, seed=3, device="cpu", env_fn=ToyEnvFactory(),
                     progress=False, max_steps=5, n_videos=0, token_history=token_history)
    finally:
        del policy.obs_conditioner.token_encoder.encode
    return s, count.frames


def test_evaluator_encodes_each_frame_once_with_the_same_results():
    policy = _policy()
    assert frozen_token_encoder(policy) is not None
    ref, ref_frames = _evaluate(policy, token_history=False)
    got, got_frames = _evaluate(policy, token_history=True)
    assert ref["frames_encoded"] is None and got["frames_encoded"] == got_frames
    # re-encoding: every env step is preceded by its row in a forward, which encodes 2 steps x 2 cameras
    assert ref["policy_forwards"] == got["policy_forwards"] and ref["env_steps"] == got["env_steps"] == 15
    assert ref_frames == 2 * 2 * ref["env_steps"]
    # encoded once: toy frames show only the step counter, so identical frames of all envs are shared too
    assert got_frames <= 2 * (5 + 1) < ref_frames
    for a, b in zip(ref["episodes"], got["episodes"]):
        assert (a["length"], a["success"], a["end"]) == (b["length"], b["success"], b["end"])
        assert a["return"] == pytest.approx(b["return"], abs=1e-4)
        assert a["max_score"] == pytest.approx(b["max_score"], abs=1e-4)


def test_trainable_encoder_keeps_raw_images():
    assert frozen_token_encoder(_policy(trainable="norm")) is None
    assert frozen_token_encoder(torch.nn.Linear(2, 2)) is None


def test_deployment_policy_adapter_encodes_each_frame_once():
    """The deploy loop's ``TorchPolicy`` replanning every tick (temporal ensembling) with n_obs_steps=3: each new
    camera frame is encoded once, and the actions equal those from raw images."""
    from s2robot.deploy.control_loop import TorchPolicy
    from s2robot.policies import build_policy
    from s2robot.policies.base import ShapeMeta

    enc = build_encoder("vit_tiny_test")
    cfg = copy.deepcopy(TINY_POLICIES["bc_mlp"])
    cfg.update(n_obs_steps=3, n_action_steps=1)
    meta = ShapeMeta(cameras=["front", "wrist"], proprio_dim=4, action_dim=2, image_shape=[8, 8, 3],
                     token_shape=[enc.num_tokens, enc.out_dim])
    torch.manual_seed(0)
    policy = build_policy(cfg, meta, encoder=enc).eval()
    fast, plain = TorchPolicy(policy), TorchPolicy(policy, token_history=False)
    count = _Counting(fast.token_cache.encode)
    fast.token_cache.encode = count
    rng = np.random.default_rng(0)
    frames = [{"front_image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
               "wrist_image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
               "proprio": rng.normal(size=4).astype(np.float32)} for _ in range(6)]
    for t in range(3, 7):
        history = frames[t - 3:t]
        np.testing.assert_allclose(fast.predict(history), plain.predict(history), atol=1e-5)
    assert count.frames == 2 * 6  # 6 distinct frames per camera, each encoded once (not 3 x 4 ticks x 2)
    assert plain.token_cache is None


def test_deployment_warm_up_builds_engines_before_the_first_tick():
    """``TorchPolicy.warm_up`` (run by ``s2robot deploy`` before connecting) runs one chunk on blank frames of the
    policy's keys and the robot's image size: the diffusion U-Net's engine exists afterwards, nothing of the blank
    frames stays in the token cache, and the next chunk on real frames is the same as without a warm-up."""
    from s2robot.deploy.control_loop import TorchPolicy
    from s2robot.policies import build_policy
    from s2robot.policies.base import ShapeMeta

    enc = build_encoder("vit_tiny_test")
    meta = ShapeMeta(cameras=["front"], proprio_dim=4, action_dim=2, image_shape=[8, 8, 3],
                     token_shape=[enc.num_tokens, enc.out_dim])
    torch.manual_seed(0)
    policy = build_policy(copy.deepcopy(TINY_POLICIES["diffusion_unet"]), meta, encoder=enc).eval()
    cold, warm = TorchPolicy(policy), TorchPolicy(policy)
    rng = np.random.default_rng(0)
    history = [{"front_image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                "proprio": rng.normal(size=4).astype(np.float32)} for _ in range(policy.n_obs_steps)]
    torch.manual_seed(1)
    expected = cold.predict(history)
    policy._denoiser_runner = None  # as loaded: nothing built yet
    assert warm.warm_up((8, 8)) > 0
    if policy.denoiser_engine_in_use() == "openvino":
        assert policy._denoiser_runner is not None and policy._denoiser_runner._run is not None
    assert len(warm.token_cache._cache) == 0
    torch.manual_seed(1)
    np.testing.assert_allclose(warm.predict(history), expected, atol=1e-5)
    assert TorchPolicy(policy).warm_up(None) == 0.0  # image sizes unknown: nothing to warm up on
