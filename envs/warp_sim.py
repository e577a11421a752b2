"""N MuJoCo worlds on one device with MuJoCo Warp: batched physics, batched rendering, torch views of the state.

This is the task-agnostic simulator under the warp backend (``s2robot.envs.warp_backend`` adds the task logic and
the gymnasium-style batch env; ``s2robot.evaluation.warp_pool`` adapts that to the evaluator). It owns

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
from typing import Sequence

import mujoco
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
