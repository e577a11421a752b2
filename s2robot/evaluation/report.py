"""Evaluation outputs: ``episodes.json``, ``summary.json``, a PNG plot and mp4 videos (camera views side by side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def side_by_side(images: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate uint8 (H_i, W_i, 3) camera images left to right into one (max H, sum W, 3) frame.

    Shorter images are padded at the bottom with black; the result has even height and width (yuv420p needs it).
    """
    if not images:
        raise ValueError("side_by_side needs at least one image")
    h = max(im.shape[0] for im in images)
    cols = [np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0))) if im.shape[0] < h else im for im in images]
    frame = np.concatenate(cols, axis=1)
    ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)))
    return np.ascontiguousarray(frame, dtype=np.uint8)


MIN_VIEW_WIDTH = 256  # video views narrower than this are enlarged by an integer factor (nearest neighbour)


def annotate_frame(views: dict[str, np.ndarray], text: str) -> np.ndarray:
    """One video frame: every camera view enlarged to >= ``MIN_VIEW_WIDTH`` px, labelled with its name, side by
    side, over a strip with ``text`` (step, action, score). Returns uint8 (H, W, 3) with even sides."""
    from PIL import Image, ImageDraw

    tiles = []
    for name, im in views.items():
        factor = max(1, -(-MIN_VIEW_WIDTH // im.shape[1]))
        big = np.repeat(np.repeat(im, factor, axis=0), factor, axis=1) if factor > 1 else im
        tile = Image.fromarray(np.ascontiguousarray(big, dtype=np.uint8))
        draw = ImageDraw.Draw(tile)
        box = draw.textbbox((4, 3), name)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 3), name, fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    top = side_by_side(tiles)
    strip = Image.new("RGB", (top.shape[1], 18), (0, 0, 0))
    ImageDraw.Draw(strip).text((4, 3), text, fill=(255, 255, 255))
    return side_by_side([np.concatenate([top, np.asarray(strip)], axis=0)])


def frame_text(step: int, action: np.ndarray | None, score: float | None, success: bool) -> str:
    """``step 12  action [+0.01 -0.02 ...]  score 0.42  success`` for the video strip."""
    parts = [f"step {step}"]
    if action is not None:
        parts.append("action [" + " ".join(f"{a:+.2f}" for a in np.asarray(action).reshape(-1)) + "]")
    if score is not None:
        parts.append(f"score {score:.2f}")
    if success:
        parts.append("SUCCESS")
    return "  ".join(parts)


class VideoRecorder:
    """Streams frames of a few episodes into ``<folder>/episode_<i>.mp4`` (libx264 through imageio-ffmpeg).

    One open writer per recorded episode, so memory stays constant however long the episode is.
    """

    def __init__(self, folder: str | Path | None, episodes: Sequence[int], fps: float = 10.0):
        self.folder = None if folder is None else Path(folder)
        self.wanted = set(int(e) for e in episodes) if self.folder is not None else set()
        self.fps = float(fps)
        self._writers: dict[int, Any] = {}
        self.paths: dict[int, str] = {}

    def wants(self, episode: int) -> bool:
        return episode in self.wanted

    def add(self, episode: int, frame: np.ndarray) -> None:
        """Append one frame (H, W, 3) uint8 to episode ``episode``'s video (opened on first use)."""
        if episode not in self.wanted:
            return
        writer = self._writers.get(episode)
        if writer is None:
            import imageio.v2 as imageio

            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"episode_{episode:03d}.mp4"
            writer = imageio.get_writer(path, fps=self.fps, codec="libx264", quality=8, macro_block_size=1,
                                        pixelformat="yuv420p", ffmpeg_log_level="error")
            self._writers[episode] = writer
            self.paths[episode] = str(path)
        writer.append_data(frame)

    def finish(self, episode: int) -> None:
        writer = self._writers.pop(episode, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for ep in list(self._writers):
            self.finish(ep)


def write_json(path: str | Path, obj: Any) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return str(path)


def plot_episodes(path: str | Path, episodes: Sequence[dict[str, Any]], title: str = "") -> str:
    """Per-episode max score (or success) coloured by outcome, and a histogram of episode lengths when the lengths
    differ (a histogram with one bar says nothing the title does not: the panel is left out)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    idx = np.array([e["episode"] for e in episodes])
    success = np.array([bool(e["success"]) for e in episodes])
    errors = np.array([bool(e.get("error")) for e in episodes])
    has_score = any(e.get("max_score") is not None for e in episodes)
    values = np.array([(e["max_score"] if e.get("max_score") is not None else float(e["success"])) if has_score
                       else float(e["success"]) for e in episodes], dtype=float)
    lengths = np.array([e["length"] for e in episodes])

    show_lengths = len(np.unique(lengths)) > 1
    fig, axes = plt.subplots(1, 2 if show_lengths else 1, figsize=(10 if show_lengths else 6, 3.8), squeeze=False)
    ax0 = axes[0, 0]
    colors = np.where(errors, "tab:gray", np.where(success, "tab:green", "tab:red"))
    ax0.bar(idx, values, color=colors, width=0.9)
    ax0.scatter(idx, values, c=colors, s=14, zorder=3)  # visible even where the bar has zero height
    ax0.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax0.set_xlabel("episode")
    ax0.set_ylabel("max score" if has_score else "success")
    ax0.set_ylim(0, 1.05)
    ax0.set_title("per episode (green: success, red: failure, grey: error)", fontsize=9)
    if show_lengths:
        ax1 = axes[0, 1]
        ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.hist(lengths, bins=min(20, len(np.unique(lengths))), color="tab:blue")
        ax1.set_xlabel("episode length (steps)")
        ax1.set_ylabel("episodes")
        ax1.set_title("episode lengths", fontsize=9)
    elif len(lengths):
        ax0.set_title(f"per episode (green: success, red: failure, grey: error); every episode {lengths[0]} steps",
                      fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def policy_line(info: dict[str, Any]) -> str:
    """``checkpoint .../step_0003000 (step 3000), trained on lift_cube`` from ``summary["policy"]``."""
    if not info:
        return "policy: not from a checkpoint (no training task or step recorded)"
    ckpt = info.get("checkpoint")
    where = f"checkpoint {'/'.join(Path(ckpt).parts[-3:])}" if ckpt else "policy in training"
    return f"{where} (step {info.get('step')}), trained on {info.get('trained_task') or 'an unknown task'}"


def execution_label(execution: dict[str, Any] | None) -> str:
    """How an evaluation executed the chunks, from ``summary["execution"]``: ``ACT temporal ensembling m=0``,
    ``whole chunks``, ``whole chunks, first 4 actions of each chunk`` or, when only each chunk's first action runs
    (``replan_every=1`` or a policy's ``n_action_steps=1``; ACT then has one prediction per step to average, so
    it is the same execution), ``replan every step``. The one wording of it: the eval plot's title
    (:func:`execution_text`) and ``scripts/policy_table.py``'s groups use it. A summary without ``execution``
    (written before it was recorded) executed whole chunks."""
    execution = execution or {}
    te, k, n = (execution.get(key) for key in ("temporal_ensemble", "replan_every", "n_action_steps"))
    if 1 in (k, n):
        return "replan every step"
    how = f"ACT temporal ensembling m={te:g}" if te is not None else "whole chunks"
    return how + (f", first {k} actions of each chunk" if k else "")


def execution_text(execution: dict[str, Any] | None) -> str:
    """``; <execution_label>`` for a title line, e.g. ``; ACT temporal ensembling m=0`` (empty if absent)."""
    return f"; {execution_label(execution)}" if execution else ""


def write_report(out_dir: str | Path, episodes: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    """Write ``episodes.json``, ``summary.json`` and ``eval_plot.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    paths = {
        "episodes": str(out / "episodes.json"),
        "summary": str(out / "summary.json"),
        "plot": str(out / "eval_plot.png"),
    }
    title = (f"{summary.get('task', '')}: success {summary['n_success']}/{summary['n_episodes']} "
             f"({100 * summary['success_rate']:.0f}%, 95% CI {100 * summary['success_ci95'][0]:.0f}-"
             f"{100 * summary['success_ci95'][1]:.0f}%)")
    title += "\n" + policy_line(summary.get("policy") or {}) + execution_text(summary.get("execution"))
    plot_episodes(paths["plot"], episodes, title=title)
    write_json(paths["episodes"], list(episodes))
    write_json(paths["summary"], {**summary, "files": {**summary.get("files", {}), **paths}})
    return paths
