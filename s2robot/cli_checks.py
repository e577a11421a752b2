"""What the command line tells a user: ``--help`` per verb, unknown keys with the nearest valid ones, user errors.

* :func:`verb_help` lists a verb's config groups (default and options) and every key with its default;
  :func:`group_options` / :func:`options_text` are the one listing of a group's options (subfolders included), for
  ``--help`` and for the CLI's "not a known task config" line.
* :func:`unknown_key_error` turns hydra's "Could not override 'train.stepz'" into one line naming the nearest keys;
  :func:`check_added_keys` refuses ``+key=value`` for a key that nothing reads (only free-form mappings such as
  ``env_kwargs`` take new keys).
* :func:`user_error_line` is the one line printed for a user error (bad input, config or file); anything else is a
  bug and keeps its traceback. ``--debug`` or ``S2ROBOT_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import difflib
from typing import Any

from s2robot.configs import configs_dir

FREE_FORM = ("env_kwargs",)  # mappings whose keys are passed through (make_env kwargs): `+` may add keys there
DEBUG_ENV = "S2ROBOT_DEBUG"


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every key of a (nested) DictConfig / dict, parents included."""
    from omegaconf import DictConfig

    out = []
    if isinstance(node, (dict, DictConfig)):
        for k in node.keys():
            path = f"{prefix}{k}"
            out.append(path)
            try:
                child = node[k]
            except Exception:  # noqa: BLE001 - an interpolation that does not resolve: keep the key itself
                continue
            out += leaf_keys(child, path + ".")
    return out


def nearest(key: str, known: list[str], n: int = 3) -> list[str]:
    """The ``n`` known keys closest to ``key``: same parent first, then anywhere (by the last component too)."""
    parent = key.rpartition(".")[0]
    siblings = [k for k in known if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(key, siblings, n=n, cutoff=0.8)
    if close:
        return close
    close += [k for k in difflib.get_close_matches(key, known, n=n, cutoff=0.6) if k not in close]
    leaf = key.rpartition(".")[2]
    by_leaf = [k for k in known if difflib.get_close_matches(leaf, [k.rpartition(".")[2]], n=1, cutoff=0.8)]
    close += [k for k in by_leaf if k not in close]
    return close[:n]


def _suggest(verb: str, key: str, known: list[str]) -> str:
    near = nearest(key, known)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"{hint} (`s2robot {verb} --help` lists every key)"


def _schema_sections(cfg: Any) -> dict[str, type]:
    """``{dotted section: config dataclass}`` for the policy sections of ``cfg``: ``policy`` (the policy type's head
    config) and ``policy.obs``. The policy group's YAML sets only what differs from these, and which dataclass
    applies depends on its ``type``, so they are completed here; sections with one fixed schema (``train``,
    ``optim``, ...) are hydra structured configs already in the composed config (``cli.SCHEMAS``)."""
    # Imported here, not at the top: only configs with a policy section (train, demo) pay for torch.
    out: dict[str, type] = {}
    if not hasattr(cfg, "get"):
        return out
    policy = cfg.get("policy")
    if policy is not None:
        from s2robot.policies.conditioning import ConditioningConfig
        from s2robot.policies.factory import POLICY_TYPES

        head = POLICY_TYPES.get(policy.get("type"))
        if head is not None:
            out.update({"policy": head[0], "policy.obs": ConditioningConfig})
    return out


def schema_keys(cfg: Any) -> set[str]:
    """Dotted keys the policy dataclasses accept, also where the policy's YAML file leaves them at their default:
    ``policy.*`` of the policy type's head config and ``policy.obs.*``."""
    from dataclasses import fields

    return {f"{sec}.{f.name}" for sec, cls in _schema_sections(cfg).items() for f in fields(cls)}


def schema_defaults(cfg: Any) -> dict[str, Any]:
    """The policy dataclasses' defaults as a nested dict (``{"policy": {"horizon": 16, ..., "obs": {...}}}``), to
    show under what the policy's YAML file sets (``--help``)."""
    from dataclasses import MISSING, fields

    out: dict[str, Any] = {}
    for sec, cls in _schema_sections(cfg).items():
        node = out
        for part in sec.split("."):
            node = node.setdefault(part, {})
        for f in fields(cls):
            if f.default is not MISSING:
                node[f.name] = f.default
            elif f.default_factory is not MISSING:  # type: ignore[misc]
                node[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def unknown_key_error(verb: str, key: str, known: list[str]) -> SystemExit:
    return SystemExit(f"s2robot {verb}: unknown config key {key!r}{_suggest(verb, key, known)}")


def check_added_keys(verb: str, added: list[str], known: list[str], known_for_stage) -> None:
    """Refuse ``+key=value`` overrides that add a key nothing reads.

    ``known``: dotted keys of the verb's config before the ``+`` overrides; ``known_for_stage(stage_verb)``: the keys
    of ``configs/<stage_verb>.yaml`` (the demo's ``stages.<verb>.*`` are merged over that verb's config).
    """
    for key in added:
        if key in known or any(part in FREE_FORM for part in key.split(".")[:-1]):
            continue
        parts = key.split(".")
        if verb == "demo" and len(parts) > 2 and parts[0] == "stages":
            stage_keys = known_for_stage(parts[1])
            if ".".join(parts[2:]) in stage_keys:
                continue
            sub = _suggest(verb, ".".join(parts[2:]), stage_keys)
            raise SystemExit(f"s2robot demo: +{key} adds a key that configs/{parts[1]}.yaml does not have{sub}")
        raise SystemExit(f"s2robot {verb}: +{key} adds a key that nothing reads{_suggest(verb, key, known)}")


def group_defaults(config_name: str) -> dict[str, str | None]:
    """``{group: default option}`` from the ``defaults:`` list of ``configs/<config_name>.yaml``."""
    import yaml

    data = yaml.safe_load((configs_dir() / f"{config_name}.yaml").read_text()) or {}
    out = {}
    for item in data.get("defaults", []):
        if isinstance(item, dict):
            out.update({str(k): v for k, v in item.items()})
    return out


def group_options(group: str) -> set[str]:
    """A config group's options, subfolders included (``task=metaworld/pick-place-v3``)."""
    folder = configs_dir() / group
    return {p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")}


def options_text(options: set[str]) -> list[str]:
    """The options as shown to a user: top-level ones by name, a subfolder's many options as one
    ``folder/<name> (N options)`` entry (50 Meta-World tasks would flood ``--help`` and error lines)."""
    top = sorted(o for o in options if "/" not in o)
    folders: dict[str, int] = {}
    for o in options:
        if "/" in o:
            folder = o.split("/", 1)[0]
            folders[folder] = folders.get(folder, 0) + 1
    return top + [f"{f}/<name> ({n} options)" for f, n in sorted(folders.items())]


def verb_help(verb: str, config_name: str, cfg: Any, groups: tuple[str, ...]) -> str:
    """``s2robot <verb> --help``: usage, config groups with their default and options, every key with its default."""
    from omegaconf import OmegaConf

    lines = [f"usage: s2robot {verb} [group=option ...] [key=value ...] [--cfg job] [--debug]", ""]
    header = (configs_dir() / f"{config_name}.yaml").read_text().splitlines()
    lines += [h.lstrip("# ") for h in header[:3] if h.startswith("#")] + [""]
    defaults = group_defaults(config_name)
    shown = [g for g in groups if g in defaults or g in cfg]
    if shown:
        lines.append("config groups (group=option, or group=PATH.yaml for your own file):")
        for g in shown:
            if g == "dataset":  # a path, not an option (the group's one option only sets path: null)
                lines.append(f"  {g:<8} dataset=PATH: the demonstration store (sets dataset.path)")
                continue
            options = ", ".join(options_text(group_options(g)))
            lines.append(f"  {g:<8} default: {defaults.get(g)}   options: {options}")
        if "optional task_policy" in defaults:  # configs/task_policy/<task>_<policy>.yaml, applied by name
            pairs = ", ".join(sorted(group_options("task_policy")))
            lines.append(f"  task x policy files (configs/task_policy, applied before key=value overrides): {pairs}")
        lines.append("")
    lines.append("keys and their defaults (override with key=value; nested keys with dots, e.g. train.steps=100):")
    shown_cfg = OmegaConf.merge(OmegaConf.create(schema_defaults(cfg)), cfg)  # every key: schema defaults + YAML
    body = OmegaConf.to_yaml(shown_cfg).rstrip().splitlines()
    lines += ["  " + b for b in body]
    lines += ["", "--cfg job: print the composed config and exit.  --debug (or S2ROBOT_DEBUG=1): tracebacks for "
                  "user errors too."]
    return "\n".join(lines)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input (config, files, data), not a bug: one line, no traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError, ModuleNotFoundError, FloatingPointError, HydraException, OmegaConfBaseException)


def unwrap_worker_error(msg: str) -> str:
    """The original message of an exception re-raised from a DataLoader worker ("Caught ChunkError in DataLoader
    worker process 0. Original Traceback ... ChunkError: <message>"); other messages unchanged."""
    if "DataLoader worker process" not in msg or "Original Traceback" not in msg:
        return msg
    last = [line for line in msg.strip().splitlines() if line.strip()][-1].strip()
    name, sep, text = last.partition(": ")
    return text if sep and " " not in name else last


def user_error_line(verb: str, e: BaseException) -> str:
    """One line for a user error: ``s2robot <verb>: <message>``; the message's first line when it has several."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = unwrap_worker_error(str(msg).strip()) or type(e).__name__
    first, _, more = msg.partition("\n")
    if more and "full_key:" in more:  # omegaconf: "Key 'x' is not in struct\n    full_key: a.x ..."
        first += " (" + more.split("full_key:")[1].split("\n")[0].strip() + ")"
    prefix = f"s2robot {verb}:"
    first = first[len(prefix):].strip() if first.startswith(prefix) else first
    return f"{prefix} {first}"
