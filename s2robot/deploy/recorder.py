"""Record deployed episodes into an ``EpisodeStore`` (zarr), so deployments become new demonstrations.

Per commanded tick the recorder keeps the observation the command was computed at (``<cam>_image``, ``proprio``)
and the *safe* action that was actually sent (after the safety filter), plus ``success`` at the end. An episode is
appended (data first, ``episode_ends`` last) only by ``end_episode``; ``discard`` drops it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class EpisodeRecorder:
    """Buffers one episode in memory and appends it to the store at ``path`` (created on first use)."""

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None, min_steps: int = 1):
        self.path = str(path)
        self.attrs = dict(attrs or {})
        self.min_steps = int(min_steps)
        self._steps: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        self.n_recorded = 0

    def add_step(self, obs: dict[str, np.ndarray], action: np.ndarray) -> None:
        self._steps.append(({k: np.asarray(v) for k, v in obs.items()}, np.asarray(action, np.float32).copy()))

    def discard(self) -> None:
        self._steps = []

    def end_episode(self, success: bool, status: str = "") -> bool:
        """Append the buffered episode (if at least ``min_steps`` long). Returns True when one was written."""
        steps, self._steps = self._steps, []
        if len(steps) < self.min_steps:
            return False
        from s2robot.datasets.store import EpisodeStore  # zarr only once an episode is written

        keys = sorted(steps[0][0])
        episode = {k: np.stack([o[k] for o, _ in steps]) for k in keys}
        episode["action"] = np.stack([a for _, a in steps]).astype(np.float32)
        T = len(steps)
        episode["success"] = np.zeros(T, dtype=bool)
        episode["success"][-1] = bool(success)
        if Path(self.path).exists():
            store = EpisodeStore.open(self.path, mode="a")
        else:
            cams = [k[: -len("_image")] for k in keys if k.endswith("_image")]
            store = EpisodeStore.create(self.path, attrs={"source": "s2robot deploy", "cameras": cams,
                                                          **self.attrs})
        try:
            store.append_episode(episode)
        finally:
            store.close()
        self.n_recorded += 1
        return True
