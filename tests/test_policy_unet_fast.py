"""The diffusion U-Net's fast CPU inference form equals its plain forward: FiLM terms precomputed once per chunk
(``film_tables``) and convolutions as one im2col GEMM (``GemmConv1d``), within float32 rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s2robot.policies.unet1d import ConditionalUnet1D, GemmConv1d

torch.set_num_threads(1)


def _set_gemm(module: nn.Module, on: bool) -> None:
    for m in module.modules():
        if isinstance(m, GemmConv1d):
            m.gemm = on


@pytest.mark.parametrize("kw", [dict(kernel_size=5, padding=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=1), dict(kernel_size=5, padding=2, bias=False)])
@pytest.mark.parametrize("batch", [1, 3])
def test_gemm_conv_equals_conv1d(kw, batch):
    torch.manual_seed(0)
    conv = GemmConv1d(24, 40, **kw)
    plain = nn.Conv1d(24, 40, **kw)
    plain.load_state_dict(conv.state_dict())  # same parameters, same state-dict keys
    x = torch.randn(batch, 24, 16)
    with torch.no_grad():
        got, ref = conv(x), plain(x)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    y = conv(x)  # grad enabled: the nn.Conv1d path, differentiable
    assert y.requires_grad and torch.equal(y, plain(x))


def _unet():
    torch.manual_seed(0)
    return ConditionalUnet1D(action_dim=3, cond_dim=5 * 8, horizon=8, down_dims=(16, 32, 64), kernel_size=5,
                             n_groups=4, step_embed_dim=16).eval()


def test_film_tables_equal_plain_forward():
    net = _unet()
    g = torch.Generator().manual_seed(1)
    cond, x = torch.randn(2, 5, 8, generator=g), torch.randn(2, 8, 3, generator=g)
    timesteps = torch.tensor([90, 50, 10, 0])
    with torch.no_grad():
        tables = net.film_tables(timesteps, cond)
        assert len(tables) == len(net.res_blocks()) and tables[0].shape == (4, 2, 2 * 16)
        for i, t in enumerate(timesteps):
            fast = net(x, None, film=[tab[i] for tab in tables])
            _set_gemm(net, False)
            ref = net(x, t.expand(2), cond)
            _set_gemm(net, True)
            assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()
    with pytest.raises(ValueError, match="needs timestep and cond, or film"):
        net(x, None)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_gemm_conv_traces_as_a_plain_convolution():
    """An export (torch.jit.trace, as OpenVINO's conversion runs it) sees one convolution, not unfold + GEMM."""
    conv = GemmConv1d(4, 6, 3, padding=1)
    with torch.no_grad():
        graph = str(torch.jit.trace(conv, torch.randn(1, 4, 8)).graph)
    assert "aten::_convolution" in graph and "unfold" not in graph


def test_predict_action_equals_the_plain_denoising_loop():
    from s2robot.policies.normalizer import Normalizer
    from s2robot.policies import ShapeMeta, build_policy
    from policy_testlib import TINY_POLICIES

    meta = ShapeMeta(cameras=["front"], proprio_dim=4, action_dim=2, token_shape=[5, 12])
    norm = Normalizer().fit({"action": torch.randn(50, 2).numpy(), "proprio": torch.randn(50, 4).numpy()})
    torch.manual_seed(0)
    policy = build_policy(TINY_POLICIES["diffusion_unet"], meta, norm).eval()
    obs = {"front_tokens": torch.randn(2, 2, 5, 12), "proprio": torch.randn(2, 2, 4)}
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    with torch.inference_mode():
        got = policy.predict_action(obs, generators=gens())
        _set_gemm(policy, False)  # the plain loop: whole FiLM every step, nn.Conv1d
        cond, sched = policy._cond(obs), policy.inference_scheduler
        x = torch.stack([torch.randn(policy.horizon, 2, generator=g) for g in gens()])
        for t in sched.timesteps:
            x = sched.step(policy.denoiser(x, t.expand(2), cond), t, x).prev_sample
        ref = policy.unnormalize_action(x[:, 1 : 1 + policy.n_action_steps])
    assert got.shape == ref.shape == (2, policy.n_action_steps, 2)
    assert torch.allclose(got, ref, atol=1e-4)


def _tiny_diffusion_policy():
    from s2robot.policies import ShapeMeta, build_policy
    from s2robot.policies.normalizer import Normalizer
    from policy_testlib import TINY_POLICIES

    meta = ShapeMeta(cameras=["front"], proprio_dim=4, action_dim=2, token_shape=[5, 12])
    norm = Normalizer().fit({"action": torch.randn(50, 2).numpy(), "proprio": torch.randn(50, 4).numpy()})
    torch.manual_seed(0)
    return build_policy(TINY_POLICIES["diffusion_unet"], meta, norm).eval()


def _chunk(policy, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    obs = {"front_tokens": torch.randn(batch, 2, 5, 12, generator=g), "proprio": torch.randn(batch, 2, 4, generator=g)}
    with torch.inference_mode():
        return policy.predict_action(obs, generators=[torch.Generator().manual_seed(i) for i in range(batch)])


def test_openvino_denoiser_steps_equal_torch_and_follow_the_weights():
    """engine=openvino runs the U-Net's DDIM steps through OpenVINO (one static model per batch size): the chunk
    equals the PyTorch one within float32 rounding at batch 1 and 3, and after a weight edit the engine rebuilds
    (the chunk follows the new weights instead of the converted old ones). Copies drop the OpenVINO objects."""
    import copy

    from s2robot.encoders.engine import openvino_available
    from s2robot.policies.diffusion import set_denoiser_engine

    if not openvino_available():
        pytest.skip("openvino is not installed")
    policy = _tiny_diffusion_policy()
    for batch in (1, 3):
        assert set_denoiser_engine(policy, "torch") == "torch"
        ref = _chunk(policy, batch)
        assert set_denoiser_engine(policy, "openvino") == "openvino"
        got = _chunk(policy, batch)
        assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    runner = policy._denoiser_runner
    assert runner is not None and len(runner._run.requests) == 2  # one compiled model per batch size
    before = _chunk(policy, 1)
    with torch.no_grad():
        policy.denoiser.final[1].weight.mul_(1.5)  # an in-place edit, as load_state_dict makes
    after = _chunk(policy, 1)
    set_denoiser_engine(policy, "torch")
    assert not torch.allclose(after, before, atol=1e-3) and torch.allclose(after, _chunk(policy, 1), atol=1e-5)
    set_denoiser_engine(policy, None)  # None keeps the engine
    assert policy.denoiser_engine == "torch"
    twin = copy.deepcopy(policy)
    assert twin._denoiser_runner is None and "_denoiser_runner" not in str(list(policy.state_dict()))


def test_denoiser_engine_choice_and_errors(monkeypatch):
    """auto picks OpenVINO only where it can run; explicit requests that cannot run, unknown engines: one line;
    policies without a denoiser are left alone; compile_denoiser takes precedence."""
    from s2robot.encoders.engine import openvino_available
    from s2robot.policies.diffusion import set_compiled_denoiser, set_denoiser_engine

    policy = _tiny_diffusion_policy()
    assert set_denoiser_engine(policy, "auto") == ("openvino" if openvino_available() else "torch")
    assert set_denoiser_engine(policy, "fused") == "torch"  # torch-only engine: the U-Net's own fast torch form
    with pytest.raises(ValueError, match=r"^engine='onnx' is not one of \('auto', 'torch', 'fused', 'openvino'\)$"):
        set_denoiser_engine(policy, "onnx")
    monkeypatch.setenv("S2ROBOT_NO_OPENVINO", "1")
    assert set_denoiser_engine(policy, "auto") == "torch"
    with pytest.raises(ValueError, match=r"^engine='openvino' (is switched off|needs the openvino package)"):
        set_denoiser_engine(policy, "openvino")
    assert policy.denoiser_engine == "auto"  # a refused request changes nothing
    monkeypatch.delenv("S2ROBOT_NO_OPENVINO")
    set_compiled_denoiser(policy, True)
    assert policy.denoiser_engine_in_use() == "compile"
    assert set_denoiser_engine(nn.Linear(2, 2), "openvino") is None
