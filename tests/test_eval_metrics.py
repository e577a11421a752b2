"""Evaluation metrics and report helpers (no workers)."""

from __future__ import annotations

import numpy as np
import pytest

from s2robot.evaluation.metrics import summarize_episodes, wilson_interval
from s2robot.evaluation.report import side_by_side


@pytest.mark.parametrize("k,n,lo,hi", [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                       (1, 20, 0.0089, 0.2361)])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_counts_errors_as_failures():
    eps = [{"episode": 0, "success": True, "max_score": 0.9, "length": 5, "error": None},
           {"episode": 1, "success": False, "max_score": None, "length": 2, "error": "worker died"},
           {"episode": 2, "success": False, "max_score": 0.4, "length": 9, "error": None}]
    s = summarize_episodes(eps)
    assert s["n_success"] == 1 and s["n_errors"] == 1 and s["success_rate"] == pytest.approx(1 / 3)
    assert s["mean_max_score"] == pytest.approx(0.65) and s["max_length"] == 9 and s["mean_length"] == 16 / 3


def test_side_by_side_pads_to_even_sizes():
    a = np.full((5, 3, 3), 7, np.uint8)
    b = np.full((4, 4, 3), 9, np.uint8)
    f = side_by_side([a, b])
    assert f.shape == (6, 8, 3) and f.dtype == np.uint8
    assert (f[:5, :3] == 7).all() and (f[:4, 3:7] == 9).all() and (f[4:, 3:7] == 0).all()


def test_video_frames_are_enlarged_labelled_and_annotated():
    from s2robot.evaluation.report import annotate_frame, frame_text

    views = {"front": np.zeros((96, 96, 3), np.uint8), "wrist": np.zeros((96, 96, 3), np.uint8)}
    text = frame_text(12, np.array([0.01, -0.02]), 0.42, False)
    assert text == "step 12  action [+0.01 -0.02]  score 0.42"
    frame = annotate_frame(views, text)
    assert frame.shape == (96 * 3 + 18, 2 * 96 * 3, 3)  # 96 px views enlarged 3x (>= 256 px), a text strip
    assert frame[:12, :40].max() > 200 and frame[:12, 288:328].max() > 200  # each view's label
    assert frame[-16:, :200].max() > 200  # the step/action/score strip


def test_eval_plot_drops_the_length_histogram_when_it_has_one_bar(tmp_path):
    from PIL import Image

    from s2robot.evaluation.report import execution_text, plot_episodes, policy_line

    eps = [{"episode": i, "success": i % 2 == 0, "max_score": 0.5, "length": 80, "error": None} for i in range(4)]
    one = Image.open(plot_episodes(tmp_path / "a.png", eps, title="t")).size
    eps[0]["length"] = 30
    two = Image.open(plot_episodes(tmp_path / "b.png", eps, title="t")).size
    assert one[0] < two[0]  # one panel instead of two
    line = policy_line({"checkpoint": "/r/run/checkpoints/step_0003000", "step": 3000, "trained_task": "lift_cube"})
    assert line == "checkpoint run/checkpoints/step_0003000 (step 3000), trained on lift_cube"
    assert execution_text({"temporal_ensemble": 0.0, "replan_every": None}) == "; ACT temporal ensembling m=0"
    assert execution_text({"temporal_ensemble": None, "replan_every": 4}) == "; whole chunks, first 4 actions of each chunk"
    assert execution_text(None) == ""
