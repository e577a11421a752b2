"""How a chunk-predicting policy's actions are executed: chunk after chunk, or ACT temporal ensembling.

One :class:`ActionQueue` per episode. Chunks are keyed by the tick (control step) of the observation they were
computed from, so the evaluator (ticks = episode steps) and the deployment control loop (ticks = wall-clock slots,
where inference may finish late) share one implementation.

- Chunk mode (``ensemble_m=None``): the newest chunk replaces the plan; with ``max_chunk=k`` only its first ``k``
  actions are kept, so the caller replans after ``k`` steps (Diffusion Policy's / LeRobot's ``n_action_steps``).
- Ensemble mode (``ensemble_m=m``, ACT): the caller adds a chunk every tick; the action for tick ``t`` averages
  every stored chunk's prediction for ``t`` with weights ``exp(-m * i)``, ``i = 0`` for the oldest chunk
  (Zhao et al. 2023). ``m = 0`` is a plain mean; larger ``m`` trusts newer chunks more.
"""

from __future__ import annotations

import math
from collections import deque
from numbers import Real

import numpy as np


def check_ensemble_coefficient(value, where: str, override: bool = False) -> float | None:
    """The one check of an ACT temporal-ensembling coefficient ``m``: ``value`` as a float, or None for whole chunks.

    Accepted: a finite number ``m >= 0`` and None. With ``override=True`` (eval's / deploy's ``temporal_ensemble``,
    which override a policy's own setting) also ``"off"`` (whole chunks, returned as None); there null means "the
    policy's own setting", so such a caller handles None before calling this. Anything else (a negative number,
    NaN, inf, a bool, any other string) is a ``ValueError`` of one line naming ``where`` (the config key) and the
    value: ``temporal_ensemble=-1.0: expected a finite number m >= 0 (ACT temporal ensembling) or null ...``.
    """
    if value is None:
        return None
    if override and isinstance(value, str) and value.strip().lower() == "off":
        return None
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    expected = ("a finite number m >= 0 (ACT temporal ensembling), 'off' (whole chunks) or null (the policy's own "
                "setting)" if override else "a finite number m >= 0 (ACT temporal ensembling) or null (whole chunks)")
    raise ValueError(f"{where}={value!r}: expected {expected}")


class ActionQueue:
    """Actions keyed by tick. Chunk mode: the newest chunk replaces the plan; ensemble mode: ACT weighting.

    Chunks are ``(L, *A)`` arrays; :meth:`action` returns one ``(*A,)`` action or None when nothing covers the tick.
    """

    def __init__(self, ensemble_m: float | None, max_chunk: int | None):
        ensemble_m = check_ensemble_coefficient(ensemble_m, "temporal_ensemble")
        if max_chunk is not None and max_chunk < 1:
            raise ValueError(f"max_chunk (actions executed per chunk) must be >= 1, got {max_chunk}")
        self.m, self.max_chunk = ensemble_m, max_chunk
        self.plan: dict[int, np.ndarray] = {}
        self.chunks: deque[tuple[int, np.ndarray]] = deque()

    def wants_chunk(self, now_tick: int, margin: int = 0) -> bool:
        """Whether the caller should plan a new chunk now: always when ensembling (a chunk per tick), else when at
        most ``margin`` planned actions are left."""
        return self.m is not None or self.remaining(now_tick) <= margin

    def clear(self):
        self.plan.clear()
        self.chunks.clear()

    def add(self, tick: int, chunk: np.ndarray, now_tick: int):
        if self.max_chunk is not None:
            chunk = chunk[: self.max_chunk]
        if tick + len(chunk) <= now_tick:
            # Every action is for a tick that already passed (inference took longer than the chunk): the freshest
            # prediction is the chunk's last action; use it for this tick rather than nothing.
            tick, chunk = now_tick, chunk[-1:]
        if self.m is None:
            self.plan = {tick + i: a for i, a in enumerate(chunk) if tick + i >= now_tick}
        else:
            self.chunks.append((tick, chunk))

    def remaining(self, now_tick: int) -> int:
        if self.m is None:
            return sum(1 for t in self.plan if t >= now_tick)
        return max((t0 + len(c) - now_tick for t0, c in self.chunks), default=0)

    def action(self, now_tick: int) -> np.ndarray | None:
        if self.m is None:
            for t in [t for t in self.plan if t < now_tick]:
                del self.plan[t]
            return self.plan.get(now_tick)
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= now_tick:
            self.chunks.popleft()
        preds = [c[now_tick - t0] for t0, c in self.chunks if t0 <= now_tick < t0 + len(c)]
        if not preds:
            return None
        w = np.exp(-self.m * np.arange(len(preds)))  # index 0 = oldest chunk
        w = (w / w.sum()).reshape(-1, *[1] * preds[0].ndim)
        return (np.stack(preds) * w).sum(0).astype(np.float32)


def execution_for(policy, temporal_ensemble: float | str | None = None) -> float | None:
    """The ACT coefficient to execute ``policy`` with, or None for whole chunks.

    ``temporal_ensemble``: None -> the policy's own ``temporal_ensemble`` (its config, saved with the checkpoint;
    None for a policy without one); ``"off"`` -> whole chunks; a number m >= 0 -> ACT ensembling with m.
    """
    if temporal_ensemble is None:
        return check_ensemble_coefficient(getattr(policy, "temporal_ensemble", None), "policy.temporal_ensemble")
    return check_ensemble_coefficient(temporal_ensemble, "temporal_ensemble", override=True)
