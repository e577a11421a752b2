"""Write configs/task/metaworld/<name>.yaml for every Meta-World v3 task (run in the Meta-World venv).

    $(bash scripts/setup_env.sh metaworld | tail -n 1)/bin/python scripts/make_metaworld_configs.py

tests/test_metaworld.py checks the shipped files equal what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = """\
# Meta-World v3 task (docs/envs.md, "Meta-World"); needs the Meta-World venv: scripts/setup_env.sh metaworld.
# Written by scripts/make_metaworld_configs.py. env_kwargs go to s2robot.envs.metaworld_tasks.MetaWorldEnv.
name: metaworld/{name}
cameras: [corner, gripperPOV]
image_size: 224
max_episode_steps: null     # null: Meta-World's max_path_length, 500 (a v3 env raises when stepped past it)
env_kwargs:
  terminate_on_success: true
"""


def config_text(name: str) -> str:
    return TEMPLATE.format(name=name)


def main() -> int:
    from s2robot.envs.metaworld_tasks import task_names

    folder = Path(__file__).resolve().parent.parent / "configs" / "task" / "metaworld"
    folder.mkdir(parents=True, exist_ok=True)
    for name in task_names():
        (folder / f"{name}.yaml").write_text(config_text(name))
    print(f"wrote {len(task_names())} task configs to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
