"""Hydra configuration (package data): verb configs at top level, groups task/, policy/, encoder/, dataset/, robot/."""

from __future__ import annotations

from pathlib import Path

__all__ = ["configs_dir"]


def configs_dir() -> Path:
    """The folder of the shipped YAML configs (this package's directory)."""
    return Path(__file__).resolve().parent
