"""MuJoCo table-top manipulation tasks with cameras (gymnasium), scripted experts and demo collection.

Importing this package picks a headless GL backend (EGL, else OSMesa) *before* MuJoCo is imported and registers
the gymnasium ids in ``TASKS``::

    from s2robot.envs import make_env, TASKS
    env = make_env("lift_cube", image_size=96, cameras=("front", "wrist"))
"""

from __future__ import annotations

from .rendering import configure_gl

configure_gl()

import gymnasium as gym  # noqa: E402

from .tasks import TASK_SPECS  # noqa: E402

#: task name -> gymnasium id
TASKS: dict[str, str] = {name: spec.env_id for name, spec in TASK_SPECS.items()}

_ENTRY_POINT = "s2robot.envs.base:ManipulationEnv"


def _register() -> None:
    for name, spec in TASK_SPECS.items():
        if spec.env_id not in gym.registry:
            gym.register(id=spec.env_id, entry_point=_ENTRY_POINT, kwargs={"task": name},
                         max_episode_steps=spec.max_episode_steps)


_register()


def make_env(task: str, image_size=224, cameras=("front", "wrist"), max_episode_steps: int | None = None,
             **env_kwargs) -> gym.Env:
    """Build a task env by name (``TASKS`` key) or gymnasium id, with a ``TimeLimit`` of the task's episode length.

    ``env_kwargs`` go to ``ManipulationEnv`` (``control_hz``, ``max_delta``, ``max_dyaw``, ``terminate_on_success``).
    ``metaworld/<v3-task-name>`` builds a Meta-World task (``metaworld_tasks.MetaWorldEnv``; needs its venv).
    """
    from .metaworld_tasks import env_id as metaworld_env_id, is_metaworld_task

    env_id = metaworld_env_id(task) if is_metaworld_task(task) else TASKS.get(task, task)
    if env_id not in gym.registry:
        raise KeyError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    kwargs = dict(image_size=image_size, cameras=tuple(cameras), **env_kwargs)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    return gym.make(env_id, **kwargs)


__all__ = ["TASKS", "make_env", "configure_gl"]
