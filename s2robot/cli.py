"""The ``s2robot`` command line: ``s2robot <verb> key=value ...`` with hydra overrides.

Each verb composes ``configs/<verb>.yaml`` with the overrides given (hydra ``compose``, no ``eval`` resolver) and
hands the resolved config to the verb's ``run(cfg)`` function. A few verbs take positional paths
(``s2robot dataset info PATH``). For convenience ``dataset=PATH`` / ``checkpoint=PATH`` style overrides that
name a path rather than a config-group option are rewritten to ``dataset.path=PATH``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from s2robot.cli_checks import group_options, options_text

# verb -> (module, function, config name or None for positional verbs)
VERBS: dict[str, tuple[str, str, str | None]] = {
    "collect": ("s2robot.collection", "run", "collect"),
    "cache": ("s2robot.datasets.feature_cache", "run", "cache"),
    "train": ("s2robot.training.train", "run", "train"),
    "eval": ("s2robot.evaluation.cli", "run", "eval"),
    "deploy": ("s2robot.ros.deploy", "run", "deploy"),
    "demo": ("s2robot.demo", "run", "demo"),
    "dataset info": ("s2robot.datasets.cli", "info", None),
    "dataset verify": ("s2robot.datasets.cli", "verify", None),
    "dataset import-robomimic": ("s2robot.datasets.cli", "import_robomimic", None),
    "dataset import-lerobot": ("s2robot.datasets.cli", "import_lerobot", None),
    "dataset export-lerobot": ("s2robot.datasets.cli", "export_lerobot", None),
}

CONFIG_GROUPS = ("task", "policy", "encoder", "dataset", "robot")

#: config name -> (module, dataclass) of its schema: a hydra structured config holding every key with its one
#: default, stored as ``<name>_schema`` and named first in the defaults list of ``configs/<name>.yaml``, which only
#: overrides it. Imported when that config is composed (the training schema's module imports torch).
SCHEMAS: dict[str, tuple[str, str]] = {"train": ("s2robot.training.train", "TrainRunConfig")}


def store_schema(config_name: str) -> None:
    """Put the schema of ``configs/<config_name>.yaml`` (if it has one) in hydra's ``ConfigStore``."""
    if config_name not in SCHEMAS:
        return
    from hydra.core.config_store import ConfigStore

    module, name = SCHEMAS[config_name]
    ConfigStore.instance().store(name=f"{config_name}_schema", node=getattr(importlib.import_module(module), name))


def _is_config_file(value: str) -> bool:
    """A YAML file name, or an existing path (``metaworld/pick-plac-v3``, a typo of an option, is neither)."""
    return value.endswith((".yaml", ".yml")) or ("/" in value and Path(value).expanduser().exists())


def split_group_files(overrides: list[str]) -> tuple[list[str], dict[str, Path], list[str]]:
    """Separate ``group=PATH.yaml`` overrides (a user's own config file for a config group) from the rest.

    Returns (hydra overrides, {group: file}, dotted overrides of those groups such as ``robot.port=9091``, which
    must apply to the user's file rather than to the group's default, so they are held back until it is loaded).
    A path that does not exist is an error naming it.
    """
    files: dict[str, Path] = {}
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key in CONFIG_GROUPS and key != "dataset" and value not in group_options(key) and _is_config_file(value):
            path = Path(value).expanduser()
            if not path.is_file():
                raise SystemExit(f"s2robot: {key}={value!r}: no such config file")
            files[key] = path.resolve()
    rest, held = [], []
    for ov in overrides:
        key = ov.partition("=")[0]
        if key in files:
            continue
        group = key.lstrip("+~").split(".", 1)[0]
        (held if group in files and "." in key else rest).append(ov)
    return rest, files, held


def rewrite_overrides(overrides: list[str], dataset_group: bool = True) -> list[str]:
    """Map ``dataset=some/path.zarr`` to ``dataset.path=some/path.zarr``; reject unknown group options early.

    A group override whose value is a known option is kept as is. For ``dataset`` any other value is a path, and so
    is every value where the config has no dataset group (``dataset_group=False``: training's ``dataset`` section is
    the schema's ``DatasetConfig``).
    For the other groups a value that names a YAML file is a user's own config (see :func:`compose`); any other
    unknown value is an error naming the valid options.
    """
    out = []
    for ov in overrides:
        if "=" not in ov:
            raise SystemExit(f"s2robot: override {ov!r} is not key=value")
        key, value = ov.split("=", 1)
        if key in CONFIG_GROUPS:
            options = group_options(key)
            if value not in options or (key == "dataset" and not dataset_group):
                if key == "dataset":
                    ov = f"dataset.path={value}"
                else:
                    raise SystemExit(
                        f"s2robot: {key}={value!r} is not a known {key} config; choose one of {options_text(options)} "
                        f"or give the path of your own {key} YAML file ({key}=./my_{key}.yaml)"
                    )
        out.append(ov)
    return out


def _load_group_file(group: str, path: Path):
    from omegaconf import DictConfig, OmegaConf

    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors: one line naming the file
        raise SystemExit(f"s2robot: {group}={path}: not a valid YAML config ({str(e).splitlines()[0]})") from None
    if not isinstance(node, DictConfig):
        raise SystemExit(f"s2robot: {group}={path}: the file must hold a mapping of keys, got {type(node).__name__}")
    return node


def compose(config_name: str, overrides: list[str] | None = None):
    """Compose ``configs/<config_name>.yaml`` with hydra overrides and return the resolved DictConfig.

    ``group=PATH.yaml`` (task, policy, encoder, robot) replaces that group's section by the user's own file, which
    then gets the same validation as a shipped one; ``group.key=value`` overrides apply on top of it.
    """
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf, open_dict

    from s2robot.cli_checks import group_defaults

    rest, files, held = split_group_files(list(overrides or []))
    store_schema(config_name)
    with initialize_config_module(config_module="s2robot.configs", version_base="1.3"):
        cfg = _compose_checked(config_name, rewrite_overrides(rest, "dataset" in group_defaults(config_name)))
    for group, path in files.items():
        if group not in cfg:
            raise SystemExit(f"s2robot: `{config_name}` has no {group} config group ({group}={path})")
        with open_dict(cfg):
            cfg[group] = _load_group_file(group, path)
    for ov in held:
        key, value = ov.split("=", 1)
        key = key.lstrip("+")
        if key.startswith("~"):
            parent, _, leaf = key[1:].rpartition(".")
            with open_dict(cfg):
                OmegaConf.select(cfg, parent).pop(leaf, None)
            continue
        with open_dict(cfg):
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def _compose_checked(config_name: str, overrides: list[str]):
    """hydra ``compose`` (inside an initialised config module) where an unknown key is one line naming the nearest
    valid keys, and ``+key=value`` may not add a key nothing reads (see ``cli_checks``)."""
    import re

    from hydra import compose as hydra_compose
    from hydra.errors import ConfigCompositionException

    from s2robot.cli_checks import check_added_keys, leaf_keys, schema_keys, unknown_key_error

    groups = [ov for ov in overrides if ov.partition("=")[0] in CONFIG_GROUPS]
    base = hydra_compose(config_name=config_name, overrides=groups)  # the chosen groups, no key overrides

    def known() -> list[str]:
        return leaf_keys(base)

    schema = schema_keys(base) - set(known())
    # a key the config dataclasses accept but the YAML leaves at its default is set like any other key
    overrides = [f"+{ov}" if ov.partition("=")[0] in schema else ov for ov in overrides]
    try:
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except ConfigCompositionException as e:
        bad = re.match(r"Could not (?:override|append to config)[^']*'([^']+)'", str(e))
        merging = re.match(r"Error merging override (\S+)", str(e))
        if merging and e.__cause__ is not None:  # a value of the wrong type for the schema (train.steps=abc)
            raise SystemExit(f"s2robot {config_name}: {merging.group(1)}: {str(e.__cause__).splitlines()[0]}") from None
        if bad is None:
            raise
        if f"+{bad.group(1)}" in [ov.partition("=")[0] for ov in overrides] and bad.group(1) in known():
            raise SystemExit(f"s2robot {config_name}: {bad.group(1)} is already a key; set it without the +") from None
        raise unknown_key_error(config_name, bad.group(1), known() + sorted(schema)) from None
    added = [ov.partition("=")[0].lstrip("+") for ov in overrides if ov.startswith("+")]
    added = [k for k in added if k not in schema]
    if added:
        check_added_keys(config_name, added, known(),
                         lambda verb: _stage_keys(verb, hydra_compose))
    return cfg


def _config_verbs() -> set[str]:
    return {c for _, _, c in VERBS.values() if c}


def _stage_keys(verb: str, hydra_compose) -> list[str]:
    """Every key of ``configs/<verb>.yaml`` (for the demo's ``stages.<verb>.*``); [] for a verb with no config."""
    from s2robot.cli_checks import leaf_keys

    if verb not in _config_verbs():
        return []
    store_schema(verb)
    return leaf_keys(hydra_compose(config_name=verb))


def _usage() -> str:
    lines = ["usage: s2robot <verb> [key=value ...]", "", "verbs:"]
    lines += [f"  {v}" for v in VERBS]
    lines += ["", "`s2robot <verb> --help` lists a verb's config groups and keys with their defaults.",
              "--cfg job prints the composed config and exits; --debug (or S2ROBOT_DEBUG=1) shows tracebacks."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``s2robot <verb> ...``; a user error is one line on stderr and exit status 1 (see ``cli_checks``)."""
    import os

    from s2robot.cli_checks import DEBUG_ENV, unwrap_worker_error, user_error_line, user_error_types

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    verb = " ".join(argv[:2]) if argv[:1] == ["dataset"] else (argv[0] if argv else "")
    try:
        rc = _run(argv)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
        return rc
    except SystemExit as e:  # a verb's own one-line message; a DataLoader worker's wrapped error is unwrapped
        if debug or not isinstance(e.code, str) or "Original Traceback" not in e.code:
            raise
        prefix, _, rest = e.code.partition(": ")
        print(f"{prefix}: {unwrap_worker_error(rest)}", file=sys.stderr)
        return 1
    except user_error_types() as e:
        if debug:
            raise
        print(user_error_line(verb, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"s2robot {verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `s2robot train --help | head`: the reader left; no traceback (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb = argv[0]
    rest = argv[1:]
    if verb == "dataset":
        if not rest:
            raise SystemExit("usage: s2robot dataset info PATH | s2robot dataset verify PATH | "
                             "s2robot dataset import-robomimic IN.hdf5 OUT.zarr"
                             " | s2robot dataset import-lerobot SRC OUT.zarr"
                             " | s2robot dataset export-lerobot STORE OUT_DIR")
        verb, rest = f"dataset {rest[0]}", rest[1:]
    if verb not in VERBS:
        raise SystemExit(f"s2robot: unknown verb {verb!r}\n{_usage()}")
    module, func, config_name = VERBS[verb]
    fn = getattr(importlib.import_module(module), func)
    if config_name is None:
        result = fn(rest)
    else:
        rest, show_cfg, show_help = _flags(rest)
        cfg = compose(config_name, rest)
        if show_help:
            from s2robot.cli_checks import verb_help

            print(verb_help(verb, config_name, cfg, CONFIG_GROUPS))
            return 0
        if show_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        result = fn(cfg)
    return int(result) if isinstance(result, int) else 0


def _flags(args: list[str]) -> tuple[list[str], bool, bool]:
    """Strip ``--cfg [job|all]`` and ``-h/--help`` -> (overrides, show config, show help)."""
    out, show_cfg, show_help, i = [], False, False, 0
    while i < len(args):
        a = args[i]
        if a == "--cfg":
            show_cfg = True
            if i + 1 < len(args) and args[i + 1] in ("job", "all"):
                i += 1
        elif a in ("-h", "--help"):
            show_help = True
        else:
            out.append(a)
        i += 1
    return out, show_cfg, show_help


if __name__ == "__main__":
    sys.exit(main())
