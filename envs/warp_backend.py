"""N MuJoCo worlds on one device with MuJoCo Warp: batched physics, batched rendering, torch views of the state.

This is the task-agnostic half of the warp backend (``s2robot.envs.warp_backend`` adds the task logic). It owns

- ``mujoco_warp.put_model`` / ``put_data(nworld=N)`` for one ``mujoco.MjModel``;
- one env step = ``n_substeps`` calls of ``mujoco_warp.step``, captured once into a graph and replayed with
  ``wp.capture_launch`` (a CUDA graph on GPU; warp >= 1.19 also records and replays graphs on its CPU device,
  which removes the Python launch overhead there too);
- ``create_render_context`` (no shadows, no depth) + ``refit_bvh`` + ``render`` for the task cameras, captured the
  same way, with the packed RGBA buffer exposed to torch as uint8 (N, H, W, 3) without a host round trip;
- torch tensors that *alias* the warp arrays (``wp.to_torch`` shares memory on CPU and CUDA), so writing
  ``sim.mocap_pos[...] = x`` in torch is what the next replayed step reads, and ``sim.xpos`` is what it wrote.

Everything is float32 on the warp side (MuJoCo on CPU is float64); the parity tests state the tolerance.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from typing import Sequence

import mujoco
import numpy as np
import torch

try:  # optional extra: pip install "s2robot[warp]"
    import mujoco_warp as mjw
    import warp as wp
except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
    mjw = None
    wp = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def require_warp() -> None:
    """Raise a clear error when the optional ``mujoco-warp`` / ``warp-lang`` packages are missing."""
    if _IMPORT_ERROR is not None:
        raise ImportError(
            "the warp backend needs the optional packages mujoco-warp and warp-lang "
            "(pip install 's2robot[warp]')"
        ) from _IMPORT_ERROR


def init_warp() -> None:
    """Initialise warp once, quietly (module-load chatter off; kernels are cached in ``wp.config.kernel_cache_dir``)."""
    require_warp()
    if os.environ.get("S2ROBOT_WARP_VERBOSE", "0") != "1":
        wp.config.quiet = True
        wp.config.log_level = wp.LOG_WARNING
    wp.init()


def warp_device_for(device: str | torch.device) -> tuple[torch.device, "wp.context.Device"]:
    """torch device (``cpu`` / ``cuda[:i]``) -> (torch device, matching warp device); clear error otherwise."""
    init_warp()
    tdev = torch.device(device)
    if tdev.type == "cuda" and tdev.index is None:
        tdev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if tdev.type not in ("cpu", "cuda"):
        raise ValueError(f"the warp backend runs on 'cpu' or 'cuda', got device={device!s}")
    if tdev.type == "cuda" and not wp.is_cuda_available():
        raise RuntimeError(f"device={device!s} requested but warp sees no CUDA device on this machine")
    return tdev, wp.device_from_torch(tdev)


class WarpSim:
    """``n_worlds`` copies of one MjModel stepped and rendered together on one warp device.

    Args:
        mjm: the host model (the same MjModel the CPU env uses; it is not modified).
        n_worlds: number of parallel worlds N.
        device: ``"cpu"`` or ``"cuda[:i]"`` (torch spelling); tensors below live there.
        n_substeps: physics steps per env step (control decimation).
        cameras: model camera names to render, in output order; empty for physics only.
        image_size: square render resolution (H = W) for every camera.
        use_graph: capture step/render into graphs and replay them (default on; off = eager launches).
        nconmax, njmax: per-world contact / constraint capacity (mujoco_warp defaults when None).
        per_world_rgba: give every world its own ``geom_rgba`` row (``self.geom_rgba`` (N, ngeom, 4), writable).

    Torch views (alias warp memory, float32, leading dim N): ``qpos`` (N, nq), ``qvel`` (N, nv), ``ctrl`` (N, nu),
    ``mocap_pos`` (N, nmocap, 3), ``mocap_quat`` (N, nmocap, 4, wxyz), ``xpos`` (N, nbody, 3),
    ``xquat`` (N, nbody, 4), ``site_xpos`` (N, nsite, 3), ``time`` (N,).
    """

    def __init__(
        self,
        mjm: mujoco.MjModel,
        n_worlds: int,
        device: str | torch.device = "cpu",
        n_substeps: int = 1,
        cameras: Sequence[str] = (),
        image_size: int = 84,
        use_graph: bool = True,
        nconmax: int | None = None,
        njmax: int | None = None,
        per_world_rgba: bool = False,
    ) -> None:
        if int(n_worlds) < 1:
            raise ValueError(f"n_worlds must be >= 1, got {n_worlds}")
        if int(n_substeps) < 1:
            raise ValueError(f"n_substeps must be >= 1, got {n_substeps}")
        if cameras and int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.device, self.wp_device = warp_device_for(device)
        self.mjm = mjm
        self.n_worlds = int(n_worlds)
        self.n_substeps = int(n_substeps)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.use_graph = bool(use_graph)
        for cam in self.cameras:
            if mujoco.mj_name2id(mjm, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                names = [mjm.camera(i).name for i in range(mjm.ncam)]
                raise ValueError(f"camera {cam!r} is not in the model (cameras: {names})")

        mjd = mujoco.MjData(mjm)
        mujoco.mj_forward(mjm, mjd)
        with wp.ScopedDevice(self.wp_device):
            self.m = mjw.put_model(mjm, batch_sizes={"geom_rgba": self.n_worlds} if per_world_rgba else None)
            self.d = mjw.put_data(mjm, mjd, nworld=self.n_worlds, nconmax=nconmax, njmax=njmax)
            self._reset_mask = wp.zeros(self.n_worlds, dtype=bool)
            self.rc = None
            if self.cameras:
                self.rc = mjw.create_render_context(
                    mjm,
                    nworld=self.n_worlds,
                    cam_res=(self.image_size, self.image_size),
                    render_rgb=True,
                    render_depth=False,
                    render_seg=False,
                    use_shadows=False,
                    use_textures=True,
                    cam_active=list(self.cameras),
                )
        t = wp.to_torch
        d = self.d
        self.qpos, self.qvel, self.ctrl = t(d.qpos), t(d.qvel), t(d.ctrl)
        self.mocap_pos, self.mocap_quat = t(d.mocap_pos), t(d.mocap_quat)
        self.xpos, self.xquat, self.site_xpos = t(d.xpos), t(d.xquat), t(d.site_xpos)
        self.time = t(d.time)
        self.geom_rgba = t(self.m.geom_rgba) if per_world_rgba else None
        self._reset_mask_t = t(self._reset_mask)
        if self.rc is not None:
            # packed 0xAARRGGBB words, one row per world -> bytes (b, g, r, a) in memory order (little endian)
            packed = t(self.rc.rgb_data)
            hw = self.image_size * self.image_size
            self._rgba = packed.view(torch.uint8).view(self.n_worlds, len(self.cameras), self.image_size, self.image_size, 4)
            if packed.shape[1] != hw * len(self.cameras):
                raise RuntimeError(f"unexpected render buffer size {tuple(packed.shape)} for {len(self.cameras)}x{hw} px")
        self._step_graph = None
        self._render_graph = None

    # ------------------------------------------------------------------ stream handling (CUDA only)
    @contextlib.contextmanager
    def _on_device(self):
        """Run warp work ordered after pending torch work and make torch wait for it (no-op besides scoping on CPU)."""
        with wp.ScopedDevice(self.wp_device):
            if self.device.type != "cuda":
                yield
                return
            torch_stream = wp.stream_from_torch(self.device)
            warp_stream = self.wp_device.stream
            warp_stream.wait_stream(torch_stream)
            yield
            torch_stream.wait_stream(warp_stream)

    def _launch(self, which: str, fn) -> None:
        """Run ``fn`` eagerly, or capture it once into a graph and replay it."""
        if not self.use_graph:
            fn()
            return
        graph = getattr(self, which)
        if graph is None:
            # force_module_load compiles every kernel before capture (CUDA capture cannot compile)
            with wp.ScopedCapture(device=self.wp_device, force_module_load=True) as cap:
                fn()
            graph = cap.graph
            setattr(self, which, graph)
        wp.capture_launch(graph)

    # ------------------------------------------------------------------ physics
    def _physics(self) -> None:
        for _ in range(self.n_substeps):
            mjw.step(self.m, self.d)
        mjw.forward(self.m, self.d)  # poses of the final state (step leaves them one substep old), as the CPU env

    def step(self) -> None:
        """Advance every world by ``n_substeps`` physics steps (controls/mocap as currently written), then
        recompute poses of the new state."""
        with self._on_device():
            self._launch("_step_graph", self._physics)

    def forward(self) -> None:
        """Recompute derived quantities (poses, contacts) from qpos/qvel for every world, without integrating."""
        with self._on_device():
            mjw.forward(self.m, self.d)

    def reset(self, mask: torch.Tensor) -> None:
        """Reset the worlds where ``mask`` (bool (N,)) is true to the model defaults (qpos0, body mocap poses)."""
        mask = self._check_mask(mask)
        self._reset_mask_t.copy_(mask)
        with self._on_device():
            mjw.reset_data(self.m, self.d, reset=self._reset_mask)

    def _check_mask(self, mask) -> torch.Tensor:
        mask = torch.as_tensor(mask, device=self.device)
        if mask.dtype != torch.bool or mask.shape != (self.n_worlds,):
            raise ValueError(f"mask must be bool of shape ({self.n_worlds},), got {mask.dtype} {tuple(mask.shape)}")
        return mask

    # ------------------------------------------------------------------ rendering
    def _render_all(self) -> None:
        mjw.refit_bvh(self.m, self.d, self.rc)
        mjw.render(self.m, self.d, self.rc)

    def render(self) -> dict[str, torch.Tensor]:
        """Render every camera of every world from the current poses.

        Returns ``{camera: uint8 (N, H, W, 3)}`` upright RGB on ``self.device`` (fresh tensors: the render buffer
        is reused by the next call).
        """
        if self.rc is None:
            return {}
        with self._on_device():
            self._launch("_render_graph", self._render_all)
        rgb = self._rgba[..., [2, 1, 0]]  # (N, ncam, H, W, 3): one gather, on device
        return {cam: rgb[:, i] for i, cam in enumerate(self.cameras)}

    def synchronize(self) -> None:
        """Block until all queued warp work on this device is done (for timing)."""
        wp.synchronize_device(self.wp_device)


# ====================================================================================================== task env
def _host(t: torch.Tensor) -> np.ndarray:
    """Tensor -> float64 numpy on the host (a view-then-cast on CPU; one small device-to-host copy on CUDA)."""
    return t.detach().to("cpu").numpy().astype(np.float64, copy=False)


class WarpBatchEnv:
    """A built-in s2robot task in N MuJoCo Warp worlds: batched reset/step, torch observations on ``device``.

    Same MJCF, control mapping (``robot.apply_action``), seeded initial states (``task.sample``) and success/score
    (``task.evaluate``) as ``s2robot.envs.make_env(task)``; see ``docs/warp.md``.

    Args:
        task: task name (``s2robot.envs.TASKS`` key).
        n_worlds: number of parallel worlds N.
        image_size: square camera resolution (H = W).
        cameras: camera names (``front``, ``wrist``); empty for physics only (no ``*_image`` keys).
        device: ``"cpu"`` or ``"cuda[:i]"`` (``"auto"``: CUDA if present); physics, images and proprio live there.
        use_graph: replay captured graphs for step/render (CUDA graphs on GPU, warp CPU graphs on CPU).
        nconmax, njmax: per-world contact / constraint-row capacity. Default 16 (K + 1) contacts and
            4 nconmax + 32 rows for K task objects (the experts peak at 20 contacts / 86 rows in match_marker on
            CPU MuJoCo; mujoco_warp's own default of 64 rows overflows there).
        **env_kwargs: ``ManipulationEnv`` options (``control_hz``, ``max_delta``, ``max_dyaw``, ...).

    Observation dict (torch, leading dim N): ``"<cam>_image"`` uint8 (N, H, W, 3) upright RGB and ``"proprio"``
    float32 (N, 9) = [ee xyz, gripper width, j0..j4]. Action: float (N, 5) = [dx, dy, dz, dyaw, gripper].
    """

    def __init__(self, task: str, n_worlds: int, image_size: int = 84, cameras: Sequence[str] = ("front", "wrist"),
                 device: str | torch.device = "cpu", use_graph: bool = True, nconmax: int | None = None,
                 njmax: int | None = None, **env_kwargs) -> None:
        from s2robot.device import resolve_device

        from .base import ManipulationEnv
        from .tasks import get_task
        from .warp_tasks import ModelIndex

        self.task = get_task(task)
        # the CPU env is the reference for model, substeps, action bounds and kwargs validation; it never renders
        self.reference = ManipulationEnv(self.task, image_size=image_size, cameras=tuple(cameras), render_mode=None,
                                         **env_kwargs)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.n_worlds = int(n_worlds)
        self.model = self.reference.model
        self.index = ModelIndex.from_model(self.model, self.task)
        self.n_substeps = self.reference.n_substeps
        self.control_dt = self.reference.control_dt
        self.max_delta, self.max_dyaw = self.reference.max_delta, self.reference.max_dyaw
        self.action_space = self.reference.action_space
        self.max_episode_steps = self.task.max_episode_steps
        self._scratch = self._copy_model() if self.task.n_params else None
        n_obj = len(self.task.objects)
        nconmax = int(nconmax) if nconmax is not None else 16 * (n_obj + 1)
        njmax = int(njmax) if njmax is not None else 4 * nconmax + 32
        self.sim = WarpSim(self.model, self.n_worlds, resolve_device(device), n_substeps=self.n_substeps,
                           cameras=self.cameras, image_size=self.image_size, use_graph=use_graph,
                           per_world_rgba=self.task.n_params > 0, nconmax=nconmax, njmax=njmax)
        self.device = self.sim.device
        n, dev = self.n_worlds, self.device
        self.target_pos = torch.zeros(n, 3, dtype=torch.float64, device=dev)
        self.target_yaw = torch.zeros(n, dtype=torch.float64, device=dev)
        self.params = torch.zeros(n, self.task.n_params, dtype=torch.float64, device=dev)
        self.episode_steps = torch.zeros(n, dtype=torch.int64, device=dev)
        self._obj_body = torch.as_tensor(self.index.obj_body, device=dev)
        self._arm_qadr = torch.as_tensor(self.index.arm_qadr, device=dev)
        self._finger_qadr = torch.as_tensor(self.index.finger_qadr, device=dev)
        self._seeded = torch.zeros(n, dtype=torch.bool, device=dev)

    def _copy_model(self) -> mujoco.MjModel:
        from .base import load_model

        return load_model(self.task)

    # ------------------------------------------------------------------ reset
    def reset(self, seeds, mask=None) -> dict[str, torch.Tensor]:
        """Reset the worlds where ``mask`` is true (all when None) to the seeded initial states.

        Args:
            seeds: int (N,) array/tensor; world ``i`` uses ``seeds[i]`` (entries outside ``mask`` are ignored).
            mask: bool (N,) array/tensor, or None for every world.
        Returns: the observation dict of all N worlds (see the class docstring).
        """
        from .warp_tasks import init_arrays, params_geom_rgba, sample_init

        n = self.n_worlds
        seeds = np.asarray(seeds.cpu() if isinstance(seeds, torch.Tensor) else seeds).reshape(-1)
        if seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds must be {n} integers (one per world), got {seeds.dtype} {seeds.shape}")
        mask_np = np.ones(n, dtype=bool) if mask is None else np.asarray(
            mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        if mask_np.dtype != bool or mask_np.shape != (n,):
            raise ValueError(f"mask must be bool of shape ({n},), got {mask_np.dtype} {mask_np.shape}")
        idx_np = np.flatnonzero(mask_np)
        if len(idx_np) == 0:
            return self.observe()
        init = init_arrays(sample_init(self.task, seeds[idx_np]))
        mask_t = torch.as_tensor(mask_np, device=self.device)
        idx = torch.as_tensor(idx_np, device=self.device)
        dev, f32 = self.device, torch.float32
        as_t = lambda a, dtype=f32: torch.as_tensor(np.asarray(a), dtype=dtype, device=dev)  # noqa: E731
        sim, ix = self.sim, self.index
        sim.reset(mask_t)  # qpos0, zero velocities/controls, warm-start and contacts cleared
        qpos = sim.qpos[idx]
        qpos[:, self._arm_qadr] = as_t(init.qpos["arm"])
        qpos[:, self._finger_qadr] = as_t(init.qpos["finger"])[:, None]
        for k, adr in enumerate(ix.obj_qadr):
            qpos[:, adr:adr + 3] = as_t(init.qpos["obj_pos"][:, k])
            qpos[:, adr + 3:adr + 7] = as_t(init.qpos["obj_quat"][:, k])
        sim.qpos[idx] = qpos
        sim.mocap_pos[idx, ix.mocap] = as_t(init.mocap_pos)
        sim.mocap_quat[idx, ix.mocap] = as_t(init.mocap_quat)
        sim.ctrl[idx] = as_t(init.ctrl)[:, None].expand(-1, sim.ctrl.shape[1])
        self.target_pos[idx] = as_t(init.target_pos, torch.float64)
        self.target_yaw[idx] = as_t(init.target_yaw, torch.float64)
        self.params[idx] = as_t(init.params, torch.float64)
        rgba = params_geom_rgba(self.task, self._scratch, init.params) if self._scratch is not None else None
        if rgba is not None:
            sim.geom_rgba[idx] = as_t(rgba)
        self.episode_steps[idx] = 0
        self._seeded[idx] = True
        sim.forward()
        return self.observe()

    # ------------------------------------------------------------------ step
    def step(self, actions: torch.Tensor):
        """Apply one action per world (float (N, 5)), advance ``n_substeps`` physics steps, render.

        Returns ``(obs, reward, success, score)``: the observation dict, float32 (N,) reward (= score, as the CPU
        env), bool (N,) success and float32 (N,) score in [0, 1], all on ``device``.
        """
        from . import robot

        if not bool(self._seeded.all()):
            raise RuntimeError(f"worlds {torch.flatnonzero(~self._seeded).tolist()[:8]} were never reset; "
                               "call reset(seeds) first")
        actions = torch.as_tensor(actions)
        a_dim = robot.ACTION_DIM
        if actions.shape != (self.n_worlds, a_dim):
            raise ValueError(f"actions must have shape ({self.n_worlds}, {a_dim}) = (n_worlds, "
                             f"[dx, dy, dz, dyaw, gripper]), got {tuple(actions.shape)}")
        act = _host(actions)
        bad = ~np.isfinite(act).all(axis=1)
        if bad.any():
            raise ValueError(f"actions contain NaN/Inf in worlds {np.flatnonzero(bad).tolist()[:16]}")
        pos, yaw, ctrl = robot.apply_action(_host(self.target_pos), _host(self.target_yaw), act,
                                            self.max_delta, self.max_dyaw)
        mpos, mquat = robot.mocap_from_target(pos, yaw)
        dev, f32, sim, m = self.device, torch.float32, self.sim, self.index.mocap
        self.target_pos.copy_(torch.as_tensor(pos, device=dev))
        self.target_yaw.copy_(torch.as_tensor(yaw, device=dev))
        sim.mocap_pos[:, m] = torch.as_tensor(mpos, dtype=f32, device=dev)
        sim.mocap_quat[:, m] = torch.as_tensor(mquat, dtype=f32, device=dev)
        sim.ctrl[:, :ctrl.shape[1]] = torch.as_tensor(ctrl, dtype=f32, device=dev)
        sim.step()
        self.episode_steps += 1
        success, score = self.evaluate()
        return self.observe(), score.clone(), success, score

    # ------------------------------------------------------------------ task state, success, observations
    def state_arrays(self, worlds=None):
        """``StateArrays`` (float64 numpy) of all worlds, or of the listed world indices, for ``task.evaluate``."""
        from .warp_tasks import state_arrays

        sim = self.sim
        sel = slice(None) if worlds is None else torch.as_tensor(np.atleast_1d(worlds), device=self.device)
        return state_arrays(self.index, _host(sim.xpos[sel]), _host(sim.xquat[sel]), _host(sim.site_xpos[sel]),
                            _host(sim.qpos[sel]), _host(self.params[sel]))

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Task success bool (N,) and score float32 (N,) of the current states, on ``device``."""
        from .warp_tasks import evaluate_chunked

        success, score = evaluate_chunked(self.task, self.state_arrays())
        return (torch.as_tensor(success, device=self.device),
                torch.as_tensor(score, dtype=torch.float32, device=self.device))

    def proprio(self) -> torch.Tensor:
        """float32 (N, 9): ee position, gripper width, arm joints (same layout as the CPU env)."""
        sim = self.sim
        width = sim.qpos[:, self._finger_qadr].sum(dim=1, keepdim=True)
        return torch.cat([sim.site_xpos[:, self.index.ee_site], width, sim.qpos[:, self._arm_qadr]], dim=1)

    def observe(self) -> dict[str, torch.Tensor]:
        """Observation dict of the current state: rendered images (if cameras) and proprio, on ``device``."""
        obs = {f"{cam}_image": img for cam, img in self.sim.render().items()}
        obs["proprio"] = self.proprio()
        return obs

    def world(self, i: int) -> "WorldView":
        """A single-world view with the attributes ``s2robot.envs.experts`` reads (for scripted experts)."""
        if not 0 <= int(i) < self.n_worlds:
            raise IndexError(f"world {i} out of range [0, {self.n_worlds})")
        return WorldView(self, int(i))

    def close(self) -> None:
        """Release the warp arrays and the reference env."""
        self.reference.close()
        self.sim = None


class WorldView:
    """World ``i`` of a ``WarpBatchEnv`` seen as one env by the scripted experts (``make_expert(task, view)``).

    Exposes what ``ManipulationEnv`` exposes to them: ``unwrapped``, ``task``, ``max_delta``, ``max_dyaw``,
    ``episode_steps``, ``target_pos`` (3,), ``target_yaw`` and ``state_arrays()`` (batch of 1), read from the
    batched state (host copies of a few numbers).
    """

    def __init__(self, env: WarpBatchEnv, i: int) -> None:
        self.env, self.i = env, i
        self.task, self.max_delta, self.max_dyaw = env.task, env.max_delta, env.max_dyaw

    @property
    def unwrapped(self) -> "WorldView":
        return self

    @property
    def episode_steps(self) -> int:
        return int(self.env.episode_steps[self.i])

    @property
    def target_pos(self) -> np.ndarray:
        return _host(self.env.target_pos[self.i]).copy()

    @property
    def target_yaw(self) -> float:
        return float(self.env.target_yaw[self.i])

    def state_arrays(self):
        return self.env.state_arrays([self.i])


class WarpEnvPool:
    """``WarpBatchEnv`` behind the interface of the evaluator's process pool (``s2robot.evaluation.vector_env.
    EnvPool``): ``reset(indices, seeds)`` / ``step(indices, actions)`` -> ``{i: StepResult}``, observations in
    ``obs[key]`` numpy (n_envs, ...), plus ``obs_spec``, ``action_shape``, ``max_episode_steps``, ``fps``,
    ``alive``, ``restart``, ``restarts``, ``close``. So ``backend="warp"`` in the evaluator is a one-line choice of
    pool; the same seeds, success logic, reports and videos apply.

    All worlds are stepped together; worlds not in ``indices`` get a hold action (no motion, same gripper command).
    Observations are copied to host numpy here (free on CPU; one device-to-host copy on CUDA). A fully on-device
    loop uses ``WarpBatchEnv`` directly.
    """

    def __init__(self, task: str, n_envs: int, image_size: int = 84, cameras: Sequence[str] = ("front", "wrist"),
                 device: str | torch.device = "auto", **env_kwargs) -> None:
        from . import robot

        self.env = WarpBatchEnv(task, n_envs, image_size=image_size, cameras=cameras, device=device, **env_kwargs)
        self.n_envs = int(n_envs)
        self.terminate_on_success = self.env.reference.terminate_on_success
        space = self.env.reference.observation_space
        self.obs_spec = {k: (tuple(s.shape), np.dtype(s.dtype).str) for k, s in space.spaces.items()}
        self.obs = {k: np.zeros((self.n_envs, *shape), dtype=np.dtype(dt)) for k, (shape, dt) in self.obs_spec.items()}
        self.action_shape = (robot.ACTION_DIM,)
        self.max_episode_steps = self.env.max_episode_steps
        self.fps = 1.0 / self.env.control_dt
        self.restarts = 0
        self._seeds = np.zeros(self.n_envs, dtype=np.int64)

    def _results(self, indices, obs, success=None, score=None, elapsed: float = 0.0):
        from s2robot.evaluation.vector_env import StepResult

        idx = np.asarray(indices, dtype=np.int64)
        for key, buf in self.obs.items():
            buf[idx] = obs[key][torch.as_tensor(idx, device=self.env.device)].cpu().numpy()
        if success is None:
            success, score = self.env.evaluate()
        succ, sc = success.cpu().numpy(), score.cpu().numpy()
        share = elapsed / max(1, len(idx))
        return {int(i): StepResult(ok=True, reward=float(sc[i]), success=bool(succ[i]), score=float(sc[i]),
                                   terminated=bool(succ[i]) and self.terminate_on_success, env_time=share)
                for i in idx}

    def reset(self, indices, seeds):
        """Reset worlds ``indices`` with ``seeds`` (ints; the warp backend needs explicit seeds)."""
        if any(s is None for s in seeds):
            raise ValueError("the warp backend resets with explicit seeds; got None")
        t0 = time.perf_counter()
        mask = np.zeros(self.n_envs, dtype=bool)
        mask[list(indices)] = True
        self._seeds[list(indices)] = [int(s) for s in seeds]
        obs = self.env.reset(self._seeds, mask)
        return self._results(indices, obs, elapsed=time.perf_counter() - t0)

    def step(self, indices, actions):
        """Step worlds ``indices`` with ``actions`` (len(indices), 5); the others hold still.

        Failures end episodes, never the evaluation: a raising batched step is an error for every world in
        ``indices``; a world whose state went non-finite is an error for that world only."""
        from s2robot.evaluation.vector_env import StepResult

        from . import robot

        t0 = time.perf_counter()
        env = self.env
        opening = env.sim.ctrl[:, 0].to(torch.float64) / robot.FINGER_OPEN  # gripper command of the last step
        full = torch.zeros(self.n_envs, robot.ACTION_DIM, dtype=torch.float32, device=env.device)
        full[:, 4] = (1.0 - 2.0 * opening).to(torch.float32)
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=env.device)
        full[idx] = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=env.device)
        try:
            obs, _, success, score = env.step(full)
        except Exception:  # noqa: BLE001 - one batched step failed: end these episodes, not the evaluation
            err = f"MuJoCo-Warp step raised (all worlds stepped together):\n{traceback.format_exc()}"
            return {int(i): StepResult(False, error=err) for i in indices}
        results = self._results(indices, obs, success, score, time.perf_counter() - t0)
        finite = (torch.isfinite(env.sim.qpos).all(dim=1) & torch.isfinite(env.sim.qvel).all(dim=1)).cpu().numpy()
        for i in results:
            if not finite[i]:  # a diverged world: report it like a crashed env; the evaluator resets it
                results[i] = StepResult(False, error=f"world {i}: non-finite physics state (qpos/qvel) after the step")
        return results

    def alive(self, i: int) -> bool:
        return self.env.sim is not None

    def restart(self, i: int) -> None:
        """Nothing to restart in-process: world ``i`` is simply reset again by the caller."""
        self.restarts += 1

    def close(self) -> None:
        if self.env.sim is not None:
            self.env.close()

    def __enter__(self) -> "WarpEnvPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
