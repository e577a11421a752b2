"""Ctrl-C during training: save a checkpoint at the current step, print the command that resumes, then stop.

:class:`StopRequest` replaces the SIGINT handler while the training loop runs: the first Ctrl-C only sets
``requested`` (the loop finishes its step, saves ``step_<n>`` and raises ``KeyboardInterrupt``); a second Ctrl-C
raises ``KeyboardInterrupt`` at once, as usual. Outside the main thread, and in DDP runs (``enabled=False``: ranks
would see the signal at different steps and meet different collectives), Ctrl-C keeps its usual meaning and the run
resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path


class StopRequest:
    """Context manager; ``requested`` turns True on the first SIGINT."""

    def __init__(self, enabled: bool = True) -> None:
        self.requested = False
        self.enabled = enabled
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\n[train] Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)", flush=True)

    def __enter__(self) -> StopRequest:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def resume_command(out_dir: str | Path, argv: list[str] | None = None) -> str:
    """The command that continues the run in ``out_dir``: this ``s2robot train`` command line with
    ``out_dir=<out_dir> resume=true``; for the demo, its own command (every stage resumes by itself)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["demo"]:
        return "s2robot " + shlex.join(args)
    keep = [a for a in args[1:] if not a.startswith(("resume=", "out_dir="))] if args[:1] == ["train"] else []
    return "s2robot " + shlex.join(["train", *keep, f"out_dir={out_dir}", "resume=true"])
