"""Run logging: one CSV per stream (``train.csv``, ``val.csv``, ``eval.csv``) and TensorBoard scalars.

On resume, CSV rows past the resumed step (written by a run that crashed after its last checkpoint) are dropped,
so each file stays one row per logged step.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

__all__ = ["RunLogger"]


class RunLogger:
    """``log(stream, step, values)``; a disabled logger (non-main DDP ranks) does nothing."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0):
        self.dir = Path(out_dir)
        self.enabled = enabled
        self._columns: dict[str, list[str]] = {}
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.glob("*.csv"):
            self._truncate(path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step or None)

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

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
