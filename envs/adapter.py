"""Record and evaluate *any* gymnasium env that renders images through the s2robot pipeline.

``ImageEnvAdapter(env, obs_fn)`` turns a foreign env (Meta-World, gymnasium-robotics, your own) into one that
returns the s2robot observation dict (``"<cam>_image"`` uint8 (H, W, 3), ``"proprio"`` float32 (P,)) and
``info["success"]`` / ``info["score"]`` every step, so ``s2robot.collection.record_episode``, the dataset store and the
evaluator treat it like a built-in task::

    import metaworld, gymnasium as gym
    env = gym.make("Meta-World/MT1", env_name="reach-v3", render_mode="rgb_array")
    env = ImageEnvAdapter(env, rendered_image_obs(proprio=lambda o: o[:4]), image_size=224)

``obs_fn(env, raw_obs) -> dict`` maps the wrapped env's observation (and the env, for rendering) to the dict;
``rendered_image_obs`` builds one from ``env.render()``. Images of another size are resized (bilinear).
Success comes from ``success_fn(raw_obs, info)`` if given, else ``info["success"]`` or ``info["is_success"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (H, W, 3) with bilinear resampling (identity when already that size)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max() <= 1.0:
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[:2] == tuple(size):
        return np.ascontiguousarray(image)
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def rendered_image_obs(camera: str = "front", proprio: Callable[[Any], np.ndarray] | None = None,
                       flip_vertical: bool = False) -> Callable[[gym.Env, Any], dict[str, np.ndarray]]:
    """``obs_fn`` that takes ``env.render()`` as ``<camera>_image`` and ``proprio(raw_obs)`` (default: the raw
    observation flattened) as ``proprio``. ``flip_vertical`` for envs that render upside down."""

    def obs_fn(env: gym.Env, raw_obs: Any) -> dict[str, np.ndarray]:
        frame = env.render()
        if frame is None:
            raise ValueError("env.render() returned None: create the wrapped env with render_mode='rgb_array'")
        frame = np.asarray(frame)
        if flip_vertical:
            frame = frame[::-1]
        vec = proprio(raw_obs) if proprio is not None else np.ravel(raw_obs)
        return {f"{camera}_image": frame, "proprio": np.asarray(vec, dtype=np.float32)}

    return obs_fn


class ImageEnvAdapter(gym.Wrapper):
    """Wrap ``env`` so observations are the s2robot dict and ``info`` carries ``success`` and ``score``.

    ``observation_space`` is inferred from one ``reset(seed=0)`` of the wrapped env unless given.
    """

    def __init__(self, env: gym.Env, obs_fn: Callable[[gym.Env, Any], dict[str, np.ndarray]],
                 image_size: int | tuple[int, int] = 224,
                 success_fn: Callable[[Any, dict], bool] | None = None,
                 score_fn: Callable[[Any, dict], float] | None = None,
                 observation_space: spaces.Dict | None = None):
        super().__init__(env)
        self.obs_fn = obs_fn
        self.image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.success_fn, self.score_fn = success_fn, score_fn
        if observation_space is None:
            raw, _ = env.reset(seed=0)
            observation_space = self._space_of(self._convert(raw))
        self.observation_space = observation_space
        self.cameras = tuple(k[: -len("_image")] for k in observation_space.spaces if k.endswith("_image"))

    @staticmethod
    def _space_of(obs: dict[str, np.ndarray]) -> spaces.Dict:
        out = {}
        for k, v in obs.items():
            if k.endswith("_image"):
                out[k] = spaces.Box(0, 255, v.shape, np.uint8)
            else:
                out[k] = spaces.Box(-np.inf, np.inf, v.shape, np.float32)
        return spaces.Dict(out)

    def _convert(self, raw) -> dict[str, np.ndarray]:
        obs = dict(self.obs_fn(self.env, raw))
        if "proprio" not in obs:
            raise ValueError(f"obs_fn must return a 'proprio' entry, got keys {sorted(obs)}")
        if not any(k.endswith("_image") for k in obs):
            raise ValueError(f"obs_fn must return at least one '<camera>_image' entry, got keys {sorted(obs)}")
        for k in list(obs):
            if k.endswith("_image"):
                obs[k] = resize_image(obs[k], self.image_hw)
            else:
                obs[k] = np.asarray(obs[k], dtype=np.float32).reshape(-1)
        return obs

    def _info(self, raw, info: dict) -> dict:
        info = dict(info)
        if self.success_fn is not None:
            success = bool(self.success_fn(raw, info))
        else:
            success = bool(info.get("success", info.get("is_success", False)))
        info["success"] = success
        info["score"] = float(self.score_fn(raw, info)) if self.score_fn is not None else float(
            info.get("score", success))
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raw, info = self.env.reset(seed=seed, options=options)
        return self._convert(raw), self._info(raw, info)

    def step(self, action):
        raw, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(raw), float(reward), bool(terminated), bool(truncated), self._info(raw, info)
