"""A pool of environment worker processes with shared-memory observations, per-env reset/step and restart.

Why not ``gymnasium.vector.AsyncVectorEnv``? It has the right transport (spawn context, shared-memory
observations, ``autoreset_mode=DISABLED``, per-env reset by ``reset_mask``), but two things the evaluator needs
are missing: it always steps *every* env (no step mask, so envs that have finished the last episodes would have
to be stepped with dummy actions), and a worker that dies takes the whole vector env down (the pipe is closed
and there is no way to restart one worker). This pool keeps the same properties and adds both:

- ``spawn`` workers; each builds its env inside the worker, so MuJoCo/GL contexts never cross a process
  boundary. The GL backend is chosen in the worker before MuJoCo is imported: ``mujoco_gl`` if given, else the
  inherited ``MUJOCO_GL``, else ``s2robot.envs`` probes EGL and falls back to OSMesa on import;
- observations are written by the worker into ``multiprocessing.shared_memory`` blocks, one per observation key
  with shape (n_envs, *shape); only small scalars (reward, flags, success, score, timings) go through the pipe;
- ``reset(indices, seeds)`` / ``step(indices, actions)`` act on any subset of envs concurrently;
- a worker that dies (or hangs past ``step_timeout``) is reported as a per-env error and can be ``restart``-ed
  into the same slot; an exception raised by the env is reported the same way, with its traceback, and the
  worker stays usable.

This module never imports torch or mujoco, so workers start quickly.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
import traceback
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

import numpy as np

from s2robot.evaluation.env_pool import StepResult


@dataclasses.dataclass(frozen=True)
class TaskEnvFactory:
    """Picklable env factory for a registered s2robot task; imports ``s2robot.envs`` only inside the worker."""

    task: str
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self):
        # imported here, in the worker, after it chose MUJOCO_GL: importing s2robot.envs loads MuJoCo and Mesa
        from s2robot.envs import make_env

        return make_env(self.task, **dict(self.env_kwargs))


def _scalar_info(info: dict) -> tuple[bool, float | None, dict[str, float] | None]:
    success = bool(np.asarray(info.get("success", False)).item()) if "success" in info else False
    score = info.get("score")
    score = None if score is None else float(np.asarray(score).item())
    timing = info.get("timing")
    timing = {str(k): float(v) for k, v in timing.items()} if isinstance(timing, dict) else None
    return success, score, timing


def _obs_spec(space) -> dict[str, tuple[tuple[int, ...], str]]:
    """gymnasium Dict space -> {key: (shape, dtype str)}; a clear error for anything else."""
    spaces = getattr(space, "spaces", None)
    if not isinstance(spaces, dict):
        raise TypeError(f"evaluation needs a Dict observation space (obs dict), got {type(space).__name__}")
    spec = {}
    for key, sub in spaces.items():
        if sub.shape is None or sub.dtype is None:
            raise TypeError(f"observation key {key!r} has no fixed shape/dtype ({sub!r})")
        spec[key] = (tuple(int(s) for s in sub.shape), np.dtype(sub.dtype).str)
    return spec


class RenderClock:
    """Accumulates the time an env spends in ``render_camera`` (duck-typed; the s2robot envs have it)."""

    def __init__(self, env):
        self.total = 0.0
        base = getattr(env, "unwrapped", env)
        inner = getattr(base, "render_camera", None)
        self.active = callable(inner)
        if self.active:
            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    self.total += time.perf_counter() - t0

            base.render_camera = timed  # instance attribute shadows the method, for this env only

    def take(self) -> float:
        t, self.total = self.total, 0.0
        return t


def _worker(index: int, env_fn: Callable, pipe: Connection, mujoco_gl: str | None, render_threads: int) -> None:
    """Worker main loop. Builds the env, reports its spaces, attaches shared memory, then serves commands."""
    # Mesa's llvmpipe rasteriser starts one thread per core in every process; N workers would oversubscribe.
    os.environ.setdefault("LP_NUM_THREADS", str(render_threads))
    if mujoco_gl:
        os.environ["MUJOCO_GL"] = mujoco_gl
        os.environ["PYOPENGL_PLATFORM"] = mujoco_gl
    env = None
    blocks: list[shared_memory.SharedMemory] = []
    views: dict[str, np.ndarray] = {}
    try:
        try:
            env = env_fn()
            clock = RenderClock(env)
            spec = _obs_spec(env.observation_space)
            act = env.action_space
            max_steps = getattr(getattr(env, "spec", None), "max_episode_steps", None)
            fps = env.metadata.get("render_fps") or env.metadata.get("fps")
            pipe.send(("ready", {"obs": spec, "action_shape": tuple(act.shape), "action_dtype": np.dtype(act.dtype).str,
                                 "max_episode_steps": max_steps, "fps": fps}))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            pipe.send(("init_error", traceback.format_exc()))
            return
        cmd, names = pipe.recv()
        assert cmd == "attach", cmd
        for key, name in names.items():
            shm = shared_memory.SharedMemory(name=name)
            blocks.append(shm)
            shape, dtype = spec[key]
            views[key] = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=index * _nbytes(shape, dtype))
        while True:
            cmd, data = pipe.recv()
            if cmd == "close":
                break
            try:
                t0 = time.perf_counter()
                if cmd == "reset":
                    obs, info = env.reset(seed=data)
                    reward, terminated, truncated = 0.0, False, False
                elif cmd == "step":
                    obs, reward, terminated, truncated, info = env.step(data)
                else:
                    raise ValueError(f"unknown worker command {cmd!r}")
                env_time = time.perf_counter() - t0
                for key, view in views.items():
                    view[...] = obs[key]
                success, score, timing = _scalar_info(info)
                if clock.active and timing is None:
                    render = clock.take()
                    timing = {"render": render, "physics_and_task": env_time - render}
                pipe.send(("ok", StepResult(True, float(reward), bool(terminated), bool(truncated), success, score,
                                            env_time, timing)))
            except Exception:  # noqa: BLE001 - the env failed; report it for this episode and stay alive
                pipe.send(("ok", StepResult(False, error=f"env raised during {cmd}:\n{traceback.format_exc()}")))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        views.clear()
        for shm in blocks:
            shm.close()
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class EnvPool:
    """``n_envs`` env worker processes; observations in shared memory, any subset reset/stepped at once.

    ``render_threads``: ``LP_NUM_THREADS`` for Mesa's llvmpipe in each worker (default cores // n_envs; an
    ``LP_NUM_THREADS`` already in the environment wins).

    Attributes after construction: ``obs_spec`` {key: (shape, dtype)}, ``action_shape``, ``max_episode_steps``
    (from the env's TimeLimit spec, may be None), ``fps`` (from ``env.metadata``, may be None), ``obs`` {key:
    ndarray (n_envs, *shape)} views of the shared blocks (valid until the next call that writes that env).
    """

    def __init__(self, env_fn: Callable, n_envs: int, step_timeout: float | None = 300.0,
                 start_timeout: float = 300.0, mujoco_gl: str | None = None, render_threads: int | None = None):
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.env_fn = env_fn
        self.n_envs = int(n_envs)
        self.step_timeout = step_timeout
        self.start_timeout = start_timeout
        self.mujoco_gl = mujoco_gl
        self.render_threads = int(render_threads or max(1, (os.cpu_count() or 1) // self.n_envs))
        self._ctx = mp.get_context("spawn")
        self._procs: list[mp.process.BaseProcess | None] = [None] * self.n_envs
        self._pipes: list[Connection | None] = [None] * self.n_envs
        self._blocks: dict[str, shared_memory.SharedMemory] = {}
        self.obs: dict[str, np.ndarray] = {}
        self.restarts = 0
        self.closed = False
        try:
            for i in range(self.n_envs):
                self._spawn(i)
            infos = [self._wait_ready(i) for i in range(self.n_envs)]
            first = infos[0]
            for i, info in enumerate(infos[1:], 1):
                if info["obs"] != first["obs"]:
                    raise RuntimeError(f"env {i} has observation spec {info['obs']} != env 0's {first['obs']}")
            self.obs_spec: dict[str, tuple[tuple[int, ...], str]] = first["obs"]
            self.action_shape: tuple[int, ...] = first["action_shape"]
            self.max_episode_steps: int | None = first["max_episode_steps"]
            self.fps: float | None = first["fps"]
            for key, (shape, dtype) in self.obs_spec.items():
                shm = shared_memory.SharedMemory(create=True, size=max(1, self.n_envs * _nbytes(shape, dtype)))
                self._blocks[key] = shm
                self.obs[key] = np.ndarray((self.n_envs, *shape), dtype=np.dtype(dtype), buffer=shm.buf)
            for i in range(self.n_envs):
                self._attach(i)
        except BaseException:
            self.close()
            raise

    # -- process management -------------------------------------------------------------------------------------
    def _spawn(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(i, self.env_fn, child, self.mujoco_gl, self.render_threads),
                                 daemon=True, name=f"s2robot-env-{i}")
        proc.start()
        child.close()
        self._procs[i], self._pipes[i] = proc, parent

    def _wait_ready(self, i: int) -> dict:
        pipe, proc = self._pipes[i], self._procs[i]
        ready = wait([pipe, proc.sentinel], timeout=self.start_timeout)
        if pipe in ready or pipe.poll(0):
            msg, payload = pipe.recv()
            if msg == "init_error":
                raise RuntimeError(f"env worker {i} failed to build its env:\n{payload}")
            return payload
        if not ready:
            raise TimeoutError(f"env worker {i} did not start within {self.start_timeout:.0f}s")
        raise RuntimeError(f"env worker {i} died while building its env (exit code {proc.exitcode})")

    def _attach(self, i: int) -> None:
        self._pipes[i].send(("attach", {k: shm.name for k, shm in self._blocks.items()}))

    def _kill(self, i: int) -> None:
        proc, pipe = self._procs[i], self._pipes[i]
        if pipe is not None:
            pipe.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
        self._procs[i], self._pipes[i] = None, None

    def restart(self, i: int) -> None:
        """Replace worker ``i`` (dead, hung or broken) by a fresh process attached to the same shared slot."""
        self._kill(i)
        self._spawn(i)
        info = self._wait_ready(i)
        if info["obs"] != self.obs_spec:
            raise RuntimeError(f"restarted env {i} has a different observation spec: {info['obs']}")
        self._attach(i)
        self.restarts += 1

    def alive(self, i: int) -> bool:
        return self._procs[i] is not None and self._procs[i].is_alive()

    # -- commands -------------------------------------------------------------------------------------------------
    def _call(self, indices: Sequence[int], cmd: str, payloads: Sequence[Any]) -> dict[int, StepResult]:
        results: dict[int, StepResult] = {}
        pending: dict[int, Connection] = {}
        for i, payload in zip(indices, payloads):
            try:
                self._pipes[i].send((cmd, payload))
                pending[i] = self._pipes[i]
            except (BrokenPipeError, OSError, AttributeError):
                results[i] = StepResult(False, error=self._death_message(i, cmd))
        deadline = None if self.step_timeout is None else time.monotonic() + self.step_timeout
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            by_handle = {}
            for i, pipe in pending.items():
                by_handle[pipe] = i
                by_handle[self._procs[i].sentinel] = i
            ready = wait(list(by_handle), timeout=timeout)
            if not ready:
                for i in list(pending):
                    results[i] = StepResult(False, error=f"env worker {i} did not answer {cmd!r} within "
                                                          f"{self.step_timeout:.0f}s (hung); it was killed")
                    self._kill(i)
                    del pending[i]
                break
            for handle in ready:
                i = by_handle[handle]
                if i not in pending:
                    continue
                pipe = pending[i]
                try:
                    if handle is pipe or pipe.poll(0):
                        _, res = pipe.recv()
                        results[i] = res
                    else:  # sentinel fired and nothing to read: the process is gone
                        results[i] = StepResult(False, error=self._death_message(i, cmd))
                except (EOFError, ConnectionResetError, OSError):
                    results[i] = StepResult(False, error=self._death_message(i, cmd))
                del pending[i]
        return results

    def _death_message(self, i: int, cmd: str) -> str:
        proc = self._procs[i]
        if proc is not None:
            proc.join(timeout=5)
        code = None if proc is None else proc.exitcode
        return f"env worker {i} died during {cmd!r} (process exit code {code})"

    def reset(self, indices: Sequence[int], seeds: Sequence[int | None]) -> dict[int, StepResult]:
        """Reset envs ``indices`` with the given seeds; their observations are then in ``self.obs[key][i]``."""
        return self._call(indices, "reset", [None if s is None else int(s) for s in seeds])

    def step(self, indices: Sequence[int], actions: np.ndarray) -> dict[int, StepResult]:
        """Step envs ``indices`` with ``actions`` (len(indices), *action_shape)."""
        return self._call(indices, "step", list(np.asarray(actions)))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in self._pipes:
            if pipe is not None:
                try:
                    pipe.send(("close", None))
                except (BrokenPipeError, OSError):
                    pass
        for i, proc in enumerate(self._procs):
            if proc is not None:
                proc.join(timeout=10)
            self._kill(i)
        self.obs = {}
        for shm in self._blocks.values():
            try:
                shm.close()
            except BufferError:  # a caller still holds a view; the block is freed when that view goes
                pass
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        self._blocks = {}

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
