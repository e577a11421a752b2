"""Small config helpers shared by every layer: OmegaConf nodes to plain containers, dataclass sections by name.

``plain(node)`` turns a ``DictConfig`` / ``ListConfig`` (hydra) into plain dicts and lists (interpolations
resolved) and leaves anything else as it is; ``section(node, where)`` does the same for a config *section*, which
must be a mapping (``None`` is an empty one); ``dataclass_from(cls, values, where)`` builds a config dataclass and
names unknown keys of section ``where``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["plain", "section", "dataclass_from"]


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (interpolations resolved); anything else unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def section(cfg: Any, where: str = "config") -> dict[str, Any]:
    """A config section as a new plain dict: ``None`` -> ``{}``; a non-mapping is a ``TypeError`` naming ``where``."""
    if cfg is None:
        return {}
    cfg = plain(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def dataclass_from(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """``cls(**values)`` with a clear error naming unknown keys of config section ``where``."""
    values = section(values, where)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    return cls(**values)
