"""`s2robot eval` of a privileged-state policy with the object pose it reads perturbed (a diagnostic, not an option).

How precisely must a policy know the object's pose (push_t's T)? The state vector is per object
[x, y, z, cos yaw, sin yaw]; before each plan the policy's copy of the state history gets x, y moved by
N(0, POS_MM) mm and yaw turned by N(0, YAW_DEG) deg, either fresh at every plan (MODE=step) or one draw per episode
(MODE=episode: a fixed bias, like a frozen encoder's systematic error). The env itself is untouched. The noise generator is seeded from the episode index.
Usage: POS_MM=5 YAW_DEG=5 MODE=step python scripts/eval_state_noise.py checkpoint=RUN episodes=50 ...
(the eval verb's own arguments). It patches the rollout's ``plan`` (``s2robot.evaluation.rollout``), so it follows
that private method; ``tests/test_probe_tokens.py`` checks the patch. Only the first object's pose is moved.
"""
import os
import sys

import numpy as np

from s2robot.evaluation import rollout

POS = float(os.environ.get("POS_MM", "0")) / 1000.0
YAW = np.deg2rad(float(os.environ.get("YAW_DEG", "0")))
MODE = os.environ.get("MODE", "step")
_plan = rollout._BatchedRollout.plan
_rngs, _bias = {}, {}


def _draw(ep_index: int) -> np.ndarray:
    rng = _rngs.setdefault(ep_index, np.random.default_rng(1000 + ep_index))
    if MODE == "episode":
        if ep_index not in _bias:
            _bias[ep_index] = rng.normal(size=3) * [POS, POS, YAW]
        return _bias[ep_index]
    return rng.normal(size=3) * [POS, POS, YAW]


def plan(self, need):
    buf = self.hist["state"]
    saved = buf[need].copy()
    for k in need:
        dx, dy, dyaw = _draw(self.slots[k].index)
        s = buf[k]  # (T_obs, 5): x, y, z, cos, sin
        yaw = np.arctan2(s[:, 4], s[:, 3]) + dyaw
        s[:, 0] += dx
        s[:, 1] += dy
        s[:, 3], s[:, 4] = np.cos(yaw), np.sin(yaw)
    try:
        return _plan(self, need)
    finally:
        buf[need] = saved


if __name__ == "__main__":
    rollout._BatchedRollout.plan = plan
    from s2robot.cli import main

    print(f"[noise] pos {POS * 1000:.1f} mm, yaw {np.rad2deg(YAW):.1f} deg, mode {MODE}", flush=True)
    sys.exit(main(["eval", *sys.argv[1:]]))
