"""``predict_action`` takes numpy observations (what an env returns) as well as torch tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_policy_heads import encoder, make, meta, normalizer  # noqa: F401  (fixtures)
from policy_testlib import CAMERAS, IMG, PROPRIO


@pytest.mark.parametrize("name", ["bc_mlp", "diffusion_unet"])
def test_predict_action_accepts_numpy(name, meta, normalizer, encoder):  # noqa: F811
    policy = make(name, meta, normalizer, encoder).eval()
    rng = np.random.default_rng(0)
    obs = {f"{c}_image": rng.integers(0, 255, (2, policy.n_obs_steps, IMG, IMG, 3), dtype=np.uint8) for c in CAMERAS}
    obs["proprio"] = rng.normal(size=(2, policy.n_obs_steps, PROPRIO))  # float64, as numpy makes it
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    got = policy.predict_action(obs, generators=g)
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    want = policy.predict_action({k: torch.from_numpy(v) for k, v in obs.items()}, generators=g)
    torch.testing.assert_close(got, want)


def test_predict_action_names_an_unsupported_type(meta, normalizer, encoder):  # noqa: F811
    policy = make("bc_mlp", meta, normalizer, encoder).eval()
    obs = {f"{c}_image": torch.zeros(1, 2, IMG, IMG, 3, dtype=torch.uint8) for c in CAMERAS}
    obs["proprio"] = [[0.0] * PROPRIO] * 2
    with pytest.raises(TypeError, match="observation 'proprio' is a list; predict_action takes torch tensors or numpy"):
        policy.predict_action(obs)
