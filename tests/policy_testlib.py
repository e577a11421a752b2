"""Helpers shared by the policy and training tests: a tiny synthetic store and tiny configs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CAMERAS = ("front", "wrist")
PROPRIO, ACTION, IMG = 4, 2, 32

TINY_OBS = dict(backbone="tokens", pooling="attention", num_queries=2, d_model=16, n_heads=2, n_layers=1)
TINY_POLICIES: dict[str, dict[str, Any]] = {
    "bc_mlp": dict(name="bc_mlp", type="bc", n_obs_steps=2, n_action_steps=4, head="mlp", hidden=32, n_layers=2,
                   obs=TINY_OBS),
    "bc_gmm": dict(name="bc_gmm", type="bc", n_obs_steps=2, n_action_steps=4, head="gmm", hidden=32, n_layers=2,
                   gmm_modes=3, gmm_eval_mode="sample", obs=TINY_OBS),
    "bc_transformer": dict(name="bc_transformer", type="bc", n_obs_steps=3, n_action_steps=2, head="mlp",
                           hidden=32, n_layers=1, temporal="transformer", tf_d_model=16, tf_layers=1, tf_heads=2,
                           tf_dropout=0.0, obs=dict(TINY_OBS, pooling="transformer")),
    "diffusion_unet": dict(name="diffusion_unet", type="diffusion", horizon=8, n_obs_steps=2, n_action_steps=4,
                           unet_down_dims=[16, 32], unet_n_groups=4, step_embed_dim=16, num_inference_steps=5,
                           obs=TINY_OBS),
    "diffusion_transformer": dict(name="diffusion_transformer", type="diffusion", denoiser="transformer", horizon=8,
                                  n_obs_steps=2, n_action_steps=4, tf_d_model=16, tf_layers=1, tf_heads=2,
                                  tf_dropout=0.0, num_inference_steps=5, obs=dict(TINY_OBS, share_cameras=False)),
}
TINY_ENCODER = dict(name="vit_tiny_test", checkpoint=None, scales=[1, 2], input_size=None, max_split_size=None,
                    trainable="frozen", use_prefix=True, seed=0, arch=None, max_batch=None)


def make_store(path: Path, episodes: int = 4, length: int = 20, seed: int = 0, state: bool = False) -> Path:
    """A tiny store whose action depends on proprio and on the front image's brightness (learnable); ``state``:
    with a privileged ``state`` (length, 2) = [brightness / 255, proprio[0]]."""
    from s2robot.datasets.store import EpisodeStore

    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, attrs={"task": "synthetic", "cameras": list(CAMERAS), "fps": 10})
    for _ in range(episodes):
        proprio = rng.normal(size=(length, PROPRIO)).astype(np.float32)
        bright = rng.integers(0, 256, size=(length,))
        front = np.broadcast_to(bright[:, None, None, None], (length, IMG, IMG, 3)).astype(np.uint8).copy()
        front[:, :8, :8] = rng.integers(0, 256, size=(length, 8, 8, 3), dtype=np.uint8)
        wrist = rng.integers(0, 256, size=(length, IMG, IMG, 3), dtype=np.uint8)
        action = np.stack([proprio[:, 0] + bright / 255.0, proprio[:, 1] - proprio[:, 2]], axis=1).astype(np.float32)
        data = {"front_image": front, "wrist_image": wrist, "proprio": proprio, "action": action}
        if state:
            data["state"] = np.stack([bright / 255.0, proprio[:, 0]], axis=1).astype(np.float32)
        store.append_episode(data)
    store.close()
    return path


def train_cfg(store: Path, out_dir: Path, policy_name: str = "diffusion_unet", steps: int = 6, **over: Any) -> dict:
    """A plain-dict training config (what hydra composes from configs/train.yaml) with tiny settings."""
    cfg = {
        "task": {"name": "synthetic", "cameras": list(CAMERAS)},
        "policy": copy.deepcopy(TINY_POLICIES[policy_name]),
        "encoder": dict(TINY_ENCODER),
        "dataset": {"path": str(store), "val_ratio": 0.25, "seed": 0, "use_cached_features": True, "num_workers": 0},
        "seed": 0, "device": "cpu", "out_dir": str(out_dir), "resume": False, "pool_grid": None,
        "normalizer": {"action": "minmax", "proprio": "minmax"},
        "train": {"steps": steps, "batch_size": 8, "log_every": 2, "val_every": 0, "save_every": 1000,
                  "keep_last": 2, "eval_every": 0, "tensorboard": False, "progress": False},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "ema": {"enabled": True},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict) and k != "policy":
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; with 2 threads on a busy 2-core CPU the tests ran 9x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
