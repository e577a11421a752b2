"""Run logging: one CSV per stream (``train.csv``, ``val.csv``, ``eval.csv``), ``learning_curve.png`` beside them,
TensorBoard scalars (``tensorboard/``, on by default) and, optionally, Weights & Biases (``wandb=offline`` works
without a network; ``wandb sync <run>/wandb/offline-run-*`` uploads later).

On resume, CSV rows past the resumed step (written by a run that crashed after its last checkpoint) are dropped,
so each file stays one row per logged step. The PNG is redrawn from the CSVs at every validation or rollout and at
the end: train loss and validation loss over steps (log scale), plus rollout success when periodic rollouts ran.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

__all__ = ["RunLogger", "plot_learning_curve"]

CURVE_FILE = "learning_curve.png"
WANDB_MODES = ("online", "offline")


def _read_csv(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            if v not in ("", None):
                cols.setdefault(k, []).append(float(v))
    return cols


def plot_learning_curve(run_dir: str | Path, title: str = "") -> str | None:
    """Draw ``<run_dir>/learning_curve.png`` from ``train.csv`` / ``val.csv`` / ``eval.csv``; None without data."""
    run_dir = Path(run_dir)
    train, val, ev = (_read_csv(run_dir / f"{s}.csv") for s in ("train", "val", "eval"))
    if not train.get("loss"):
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    has_eval = bool(ev.get("success_rate"))
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(11 if has_eval else 6.5, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(train["step"][: len(train["loss"])], train["loss"], label="train loss", color="tab:blue")
    if val.get("val_loss"):
        ax.plot(val["step"][: len(val["val_loss"])], val["val_loss"], "o-", label="val loss (EMA)", color="tab:orange")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_eval:
        ax1 = axes[0, 1]
        ax1.plot(ev["step"][: len(ev["success_rate"])], ev["success_rate"], "o-", color="tab:green")
        ax1.set_ylim(-0.02, 1.02)
        ax1.set_xlabel("step")
        ax1.set_ylabel("rollout success rate")
        ax1.grid(alpha=0.3)
    fig.suptitle(title or run_dir.name, fontsize=10)
    fig.tight_layout()
    out = run_dir / CURVE_FILE
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)


class RunLogger:
    """``log(stream, step, values)``; a disabled logger (non-main DDP ranks) does nothing."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0,
                 wandb: str | None = None, config: Mapping[str, Any] | None = None):
        """``wandb``: None (off), ``"offline"`` or ``"online"``: also log to Weights & Biases (``pip install
        wandb``); ``config``: the run's resolved config, recorded there."""
        self.dir = Path(out_dir)
        self.enabled = enabled
        self._columns: dict[str, list[str]] = {}
        self._tb = None
        self._wandb = None
        if wandb not in (None, False, "", "none") and str(wandb) not in WANDB_MODES:
            raise ValueError(f"train.wandb={wandb!r}: choose null, offline or online")
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.glob("*.csv"):
            self._truncate(path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step or None)
        if wandb not in (None, False, "", "none"):
            self._wandb = self._start_wandb(str(wandb), config)

    def _start_wandb(self, mode: str, config: Mapping[str, Any] | None):
        try:
            import wandb
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"train.wandb={mode} needs the wandb package: pip install wandb "
                                      "(or train.wandb=null)") from None
        import hashlib

        run_id = hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:12]  # one W&B run per run dir (resume)
        return wandb.init(project="s2robot", name=self.dir.name, dir=str(self.dir), mode=mode,
                          config=dict(config or {}), resume="allow", id=f"s2robot-{run_id}")

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = list(rows[0].keys()) if rows else None
        if fields is None:
            return
        keep = [r for r in rows if int(float(r["step"])) <= step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(keep)

    def log(self, stream: str, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: (float(v) if v is not None else "") for k, v in values.items()}}
        path = self.dir / f"{stream}.csv"
        if stream not in self._columns:
            if path.exists() and path.stat().st_size:
                with open(path, newline="") as f:
                    self._columns[stream] = next(csv.reader(f))
            else:
                self._columns[stream] = list(row)
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(self._columns[stream])
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns[stream], extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for k, v in values.items():
                if v is not None:
                    self._tb.add_scalar(f"{stream}/{k}", float(v), int(step))
        if self._wandb is not None:
            self._wandb.log({f"{stream}/{k}": float(v) for k, v in values.items() if v is not None}, step=int(step))
        if stream != "train":
            plot_learning_curve(self.dir)

    def close(self) -> None:
        if self.enabled:
            plot_learning_curve(self.dir)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
