"""Videos of a policy that sees no camera (a privileged-state policy): its video episodes are replayed, filmed.

The evaluator's envs render nothing for such a policy (rendering every step of every episode would cost the whole
evaluation). Instead it keeps the actions that the first ``n_videos`` episodes executed; afterwards one spawned
worker env with cameras resets with each of those episodes' seeds and steps the same actions, and its frames,
annotated like any evaluation video, go to ``videos/episode_<i>.mp4``. MuJoCo steps the same model the same way for
the same seed and actions, so the replay is the evaluated episode; each replay's tally (length, success, max score,
return: :class:`~s2robot.evaluation.env_pool.EpisodeTally`, as the evaluation counts it) and final low-dim
observation (proprio, state) are compared with the evaluation's, and an episode whose replay differs is reported,
not passed off as it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from s2robot.evaluation.env_pool import EpisodeTally
from s2robot.evaluation.report import VideoRecorder, annotate_frame, frame_text
from s2robot.evaluation.vector_env import EnvPool, TaskEnvFactory

#: cameras filmed for a policy without images when the caller names none (every built-in task has ``front``)
DEFAULT_VIDEO_CAMERAS = ("front",)


@dataclasses.dataclass
class EpisodeLog:
    """What the evaluation keeps of a video episode it cannot film: the executed actions ``[(A,), ...]`` and its
    last low-dim observation ``{key: array}`` (every key but the ``*_image`` ones)."""

    actions: list[np.ndarray] = dataclasses.field(default_factory=list)
    final_obs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


#: what a replay's record must equal in the evaluated episode's record
REPLAYED_FIELDS = ("length", "success", "max_score", "return")


def _same(replay: EpisodeTally, final_obs: dict[str, np.ndarray], record: dict[str, Any], log: EpisodeLog) -> bool:
    """Whether the replay reproduced the evaluated episode: its record's :data:`REPLAYED_FIELDS` and last obs."""
    replayed = replay.record(record["end"])
    return all(replayed[k] == record[k] for k in REPLAYED_FIELDS) and log.final_obs.keys() == final_obs.keys() \
        and all(np.array_equal(log.final_obs[k], final_obs[k]) for k in log.final_obs)


def low_dim(obs: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Slot ``k``'s low-dim observation (every key but the ``*_image`` ones) from a pool's batched ``obs``."""
    return {key: np.array(v[k]) for key, v in obs.items() if not key.endswith("_image")}


def video_env_fn(env_fn: Callable, cameras: Sequence[str] | None) -> TaskEnvFactory | None:
    """The evaluated env, rendering ``cameras`` (default :data:`DEFAULT_VIDEO_CAMERAS`); None for an env factory
    that is not a built-in task's (its cameras cannot be changed from here)."""
    if not isinstance(env_fn, TaskEnvFactory):
        return None
    return TaskEnvFactory(env_fn.task, {**env_fn.env_kwargs, "cameras": tuple(cameras or DEFAULT_VIDEO_CAMERAS)})


def replay_videos(env_fn: Callable, episodes: dict[int, EpisodeLog], records: Sequence[dict[str, Any]],
                  video: VideoRecorder, step_timeout: float | None = 300.0) -> list[int]:
    """Replay ``episodes`` ``{index: log}`` (env seed ``records[index]["seed"]``) in one worker of ``env_fn``, which
    renders cameras, and film them into ``video``; returns the indices whose replay differs from the evaluation."""
    mismatched = []
    pool = EnvPool(env_fn, 1, step_timeout=step_timeout)
    try:
        image_keys = [k for k in pool.obs_spec if k.endswith("_image")]
        for index, log in sorted(episodes.items()):
            ep = EpisodeTally(index, int(records[index]["seed"]))
            res = pool.reset([0], [ep.seed])[0]
            ok = res.ok
            for action in [None, *log.actions]:
                if action is not None:
                    res = pool.step([0], np.asarray(action)[None])[0]
                    ok = ok and res.ok
                    if not ok:
                        break
                    ep.length += 1
                ep.observe(res)
                views = {key[: -len("_image")]: pool.obs[key][0] for key in image_keys}
                video.add(index, annotate_frame(views, frame_text(ep.length, action, ep.max_score, ep.success)))
            video.finish(index)
            if not (ok and _same(ep, low_dim(pool.obs, 0), records[index], log)):
                mismatched.append(index)
    finally:
        pool.close()
    return mismatched
