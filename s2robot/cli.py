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

# verb -> (module, function, config name or None for positional verbs)
VERBS: dict[str, tuple[str, str, str | None]] = {
    "collect": ("s2robot.envs.collect", "run", "collect"),
    "cache": ("s2robot.datasets.feature_cache", "run", "cache"),
    "train": ("s2robot.training.train", "run", "train"),
    "eval": ("s2robot.evaluation.cli", "run", "eval"),
    "deploy": ("s2robot.ros.deploy", "run", "deploy"),
    "demo": ("s2robot.demo", "run", "demo"),
    "dataset info": ("s2robot.datasets.cli", "info", None),
    "dataset import-robomimic": ("s2robot.datasets.cli", "import_robomimic", None),
    "dataset import-lerobot": ("s2robot.datasets.cli", "import_lerobot", None),
    "dataset export-lerobot": ("s2robot.datasets.cli", "export_lerobot", None),
}

CONFIG_GROUPS = ("task", "policy", "encoder", "dataset", "robot")


def _group_options(group: str) -> set[str]:
    folder = Path(importlib.import_module("s2robot.configs").__file__).parent / group
    return {p.stem for p in folder.glob("*.yaml")}


def _is_config_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or "/" in value


def split_group_files(overrides: list[str]) -> tuple[list[str], dict[str, Path], list[str]]:
    """Separate ``group=PATH.yaml`` overrides (a user's own config file for a config group) from the rest.

    Returns (hydra overrides, {group: file}, dotted overrides of those groups such as ``robot.port=9091``, which
    must apply to the user's file rather than to the group's default, so they are held back until it is loaded).
    A path that does not exist is an error naming it.
    """
    files: dict[str, Path] = {}
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key in CONFIG_GROUPS and key != "dataset" and value not in _group_options(key) and _is_config_file(value):
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


def rewrite_overrides(overrides: list[str]) -> list[str]:
    """Map ``dataset=some/path.zarr`` to ``dataset.path=some/path.zarr``; reject unknown group options early.

    A group override whose value is a known option is kept as is. For ``dataset`` any other value is a path.
    For the other groups a value that names a YAML file is a user's own config (see :func:`compose`); any other
    unknown value is an error naming the valid options.
    """
    out = []
    for ov in overrides:
        if "=" not in ov:
            raise SystemExit(f"s2robot: override {ov!r} is not key=value")
        key, value = ov.split("=", 1)
        if key in CONFIG_GROUPS:
            options = _group_options(key)
            if value not in options:
                if key == "dataset":
                    ov = f"dataset.path={value}"
                else:
                    raise SystemExit(
                        f"s2robot: {key}={value!r} is not a known {key} config; choose one of {sorted(options)} "
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

    rest, files, held = split_group_files(list(overrides or []))
    with initialize_config_module(config_module="s2robot.configs", version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=rewrite_overrides(rest))
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


def _usage() -> str:
    lines = ["usage: s2robot <verb> [key=value ...]", "", "verbs:"]
    lines += [f"  {v}" for v in VERBS]
    lines += ["", "Add --cfg to print the composed config and exit."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb = argv[0]
    rest = argv[1:]
    if verb == "dataset":
        if not rest:
            raise SystemExit("usage: s2robot dataset info PATH | s2robot dataset import-robomimic IN.hdf5 OUT.zarr"
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
        show_cfg = "--cfg" in rest
        rest = [a for a in rest if a != "--cfg"]
        cfg = compose(config_name, rest)
        if show_cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        result = fn(cfg)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
