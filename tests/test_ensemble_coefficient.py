"""One check of the ACT temporal-ensembling coefficient (``policies.action_queue.check_ensemble_coefficient``) behind
every place that takes one: the policy configs, ``BasePolicy``, the deploy loop, ``s2robot deploy``'s options, the
action queue and eval's / deploy's override (``execution_for``). Each rejects the same values with the same one line
naming the key and the value; "off" (whole chunks) is accepted only where a value overrides a policy's own setting.
"""

from __future__ import annotations

import math
import re

import pytest

from s2robot.deploy.control_loop import LoopConfig
from s2robot.policies.action_queue import ActionQueue, check_ensemble_coefficient, execution_for
from s2robot.policies.bc import BCConfig
from s2robot.policies.diffusion import DiffusionConfig
from s2robot.ros.deploy import DeployOptions


class _Policy:
    temporal_ensemble = 0.5


# name -> (build with the value, the key its message names, accepts "off")
ENTRY_POINTS = {
    "BCConfig": (lambda v: BCConfig(temporal_ensemble=v).temporal_ensemble, "policy.temporal_ensemble", False),
    "DiffusionConfig": (lambda v: DiffusionConfig(temporal_ensemble=v).temporal_ensemble,
                        "policy.temporal_ensemble", False),
    "LoopConfig": (lambda v: LoopConfig(temporal_ensemble=v).temporal_ensemble, "temporal_ensemble", False),
    "ActionQueue": (lambda v: ActionQueue(v, None).m, "temporal_ensemble", False),
    "DeployOptions": (lambda v: DeployOptions(checkpoint="ckpt", temporal_ensemble=v).temporal_ensemble,
                      "temporal_ensemble", True),
    "execution_for": (lambda v: execution_for(_Policy(), v), "temporal_ensemble", True),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), "abc", True])
def test_every_entry_point_rejects_with_one_line_naming_key_and_value(entry, bad):
    build, key, _ = ENTRY_POINTS[entry]
    with pytest.raises(ValueError) as e:
        build(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert re.fullmatch(re.escape(f"{key}={bad!r}: expected a finite number m >= 0 (ACT temporal ensembling)")
                        + r".* or null \(.*\)", msg), msg


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_accepts_numbers_null_and_off_where_it_overrides(entry):
    build, key, takes_off = ENTRY_POINTS[entry]
    for good in (0, 0.0, 0.1):
        assert float(build(good)) == pytest.approx(good)
    if entry == "execution_for":
        assert build(None) == 0.5  # null: the policy's own setting
        assert build("off") is None and build(" OFF ") is None  # whole chunks
    elif takes_off:
        assert build(None) is None and build("off") == "off"  # kept as given; execution_for resolves it
    else:
        assert build(None) is None
        with pytest.raises(ValueError, match=re.escape(f"{key}='off': expected")):
            build("off")


def test_policy_default_is_checked_too():
    class Foreign:
        temporal_ensemble = math.nan

    with pytest.raises(ValueError, match=r"^policy.temporal_ensemble=nan: expected"):
        execution_for(Foreign())
    assert execution_for(object()) is None  # a policy without the attribute: whole chunks


def test_numpy_numbers_are_numbers():
    import numpy as np

    assert check_ensemble_coefficient(np.float32(0.25), "k") == 0.25
    assert check_ensemble_coefficient(np.int64(0), "k") == 0.0


def test_deploy_cli_reports_a_bad_coefficient_as_one_line():
    from s2robot import cli
    from s2robot.ros.deploy import load_configs

    for value in ("-1", "nan", "abc"):
        cfg = cli.compose("deploy", ["checkpoint=ckpt", f"temporal_ensemble={value}"])
        with pytest.raises(SystemExit, match=r"^s2robot deploy: temporal_ensemble=\S+: expected a finite number m >= 0 "
                                             r"\(ACT temporal ensembling\), 'off' \(whole chunks\) or null"):
            load_configs(cfg)
