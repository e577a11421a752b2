"""Type checking of config dicts against dataclass annotations, with one-line errors naming key, value and type.

A robot or deploy config arrives from YAML and hydra overrides as plain values: ``rate_hz=fast`` is the string
``"fast"``, ``secure=yes`` the string ``"yes"``, ``estop_topic=5`` the integer 5. ``typed_kwargs`` checks every value
against the dataclass field's annotation before the dataclass is built, so a wrong type fails at start-up as
``robot.rate_hz='fast': expected a number`` instead of a traceback (or a silent acceptance) later. Range and
consistency checks stay in each dataclass's ``__post_init__``, raising ``ConfigError`` through :func:`bad`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong (a user error, reported as one line, never a traceback)."""


def bad(key: str, value: Any, expected: str) -> ConfigError:
    """``ConfigError("<key>=<value>: expected <expected>")``."""
    return ConfigError(f"{key}={value!r}: expected {expected}")


def describe(tp: Any) -> str:
    """Human wording of an annotation: ``float | None`` -> ``"a number or null"``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in args else []))
    if origin is list:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(tp)]}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against annotation ``tp`` (ints accepted for floats); nested dataclasses are built."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        deeper: list[ConfigError] = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, key)
            except ConfigError as e:  # an error about a key inside the value is the one to report
                if not str(e).startswith(f"{key}="):
                    deeper.append(e)
        if deeper:
            raise deeper[0]
        raise bad(key, value, describe(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [check_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    elif origin is dict:
        if isinstance(value, Mapping):
            return {str(k): check_value(v, args[1], f"{key}.{k}") if args else v for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp(**typed_kwargs(tp, value, key))
    else:  # an annotation this checker does not know: a bug in the dataclass, not a user error
        raise TypeError(f"config_types cannot check {key} against {tp!r}")
    raise bad(key, value, describe(tp))


def typed_kwargs(klass: type, d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Check ``d`` against the fields of dataclass ``klass``: unknown keys, missing required keys and every
    value's type, each an error naming ``<prefix>.<key>``. Returns the keyword arguments for ``klass``."""
    hints = typing.get_type_hints(klass)
    fields = {f.name: f for f in dataclasses.fields(klass) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix or klass.__name__}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in d]
    if missing:
        wanted = ", ".join(describe(hints[n]) for n in missing)
        raise ConfigError(f"{prefix or klass.__name__}: missing required keys {missing} ({wanted})")
    return {k: check_value(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in d.items()}
