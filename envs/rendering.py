"""Headless OpenGL selection and the lean offscreen camera renderer.

``configure_gl()`` must run before ``mujoco`` is first imported (``s2robot.envs`` calls it on import): MuJoCo
binds its GL backend at import time from ``MUJOCO_GL``. On Linux without an explicit ``MUJOCO_GL`` it tries EGL
(``libEGL.so.1``, e.g. Mesa llvmpipe or an NVIDIA driver) and falls back to OSMesa (``libOSMesa.so``); if neither
loads it raises a ``RuntimeError`` naming the missing libraries and the packages that provide them.

``CameraRenderer`` holds one ``mujoco.Renderer`` per env (all cameras share it, same size) with shadows,
reflections and skybox off: on a CPU rasteriser shadows alone cost ~30x.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

import numpy as np

_EGL_LIBS = ("libEGL.so.1", "libEGL.so")
_OSMESA_LIBS = ("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so")
_INSTALL_HINT = (
    "install Mesa (Debian/Ubuntu: `apt-get install libegl1 libgl1-mesa-dri` for EGL or "
    "`apt-get install libosmesa6` for OSMesa), or set MUJOCO_GL yourself"
)


def _loadable(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


def _egl_initialises(lib: str) -> bool:
    """True if EGL can initialise a display the way MuJoCo does (device platform, else the default display).

    A libEGL without a usable driver loads fine but fails here, so we can fall back to OSMesa in time.
    """
    try:
        egl = ctypes.CDLL(lib)
        egl.eglGetProcAddress.restype = ctypes.c_void_p
        egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        egl.eglTerminate.argtypes = [ctypes.c_void_p]
        egl.eglGetDisplay.restype = ctypes.c_void_p
        egl.eglGetDisplay.argtypes = [ctypes.c_void_p]
        displays = []
        query = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
        get_platform = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
        if query and get_platform:
            query_fn = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                        ctypes.POINTER(ctypes.c_int))(query)
            platform_fn = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p)(get_platform)
            devices = (ctypes.c_void_p * 8)()
            n = ctypes.c_int(0)
            if query_fn(8, devices, ctypes.byref(n)):
                displays += [platform_fn(0x313F, devices[i], None) for i in range(n.value)]  # EGL_PLATFORM_DEVICE_EXT
        displays.append(egl.eglGetDisplay(None))
        for display in displays:
            if display and egl.eglInitialize(display, None, None):
                egl.eglTerminate(display)
                return True
        return False
    except (OSError, AttributeError, TypeError):
        return False


def select_backend(requested: str = "") -> str:
    """The GL backend to use for ``requested`` (a ``MUJOCO_GL`` value, "" for automatic); RuntimeError naming the
    missing library when none is usable."""
    requested = requested.lower()
    if requested == "egl":
        if _loadable(_EGL_LIBS) is None:
            raise RuntimeError(f"MUJOCO_GL=egl but libEGL.so.1 cannot be loaded; {_INSTALL_HINT}")
    elif requested == "osmesa":
        if _loadable(_OSMESA_LIBS) is None:
            raise RuntimeError(f"MUJOCO_GL=osmesa but libOSMesa.so cannot be loaded; {_INSTALL_HINT}")
    elif requested:
        return requested  # glfw or anything else the user chose
    else:
        egl = _loadable(_EGL_LIBS)
        if egl is not None and _egl_initialises(egl):
            requested = "egl"
        elif _loadable(_OSMESA_LIBS) is not None:
            requested = "osmesa"
        else:
            raise RuntimeError(
                "no headless OpenGL for MuJoCo rendering: neither libEGL.so.1 (EGL) nor libOSMesa.so (OSMesa) "
                f"could be loaded; {_INSTALL_HINT}"
            )
    return requested


def _preload_triton() -> None:
    """Import triton (if installed) before Mesa is touched.

    Mesa's llvmpipe and triton each bring their own LLVM; once Mesa has initialised (even just by the EGL probe
    below), a later ``import triton`` -- which ``torchvision.models`` and ``torch._dynamo`` do -- segfaults the
    process (seen with Mesa 22 + triton 3.x). Loading triton first is safe, so do it here, once.
    """
    if "triton" in sys.modules:
        return
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # a broken triton must not break rendering; torch imports it lazily anyway
            pass


def configure_gl() -> str:
    """Pick the headless GL backend (sets ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM``) and return its name.

    Respects an explicit ``MUJOCO_GL``. Must run before ``import mujoco``; if mujoco is already imported the
    current setting is returned unchanged.
    """
    if not sys.platform.startswith("linux"):
        return os.environ.get("MUJOCO_GL", "")
    _preload_triton()
    requested = os.environ.get("MUJOCO_GL", "").lower()
    if "mujoco" in sys.modules:
        if not requested:
            warnings.warn("mujoco was imported before s2robot.envs with MUJOCO_GL unset, so it uses its default "
                          "(windowed GLFW) backend; headless rendering needs MUJOCO_GL=egl or osmesa set before "
                          "mujoco is imported", RuntimeWarning, stacklevel=2)
        return requested
    requested = select_backend(requested)
    os.environ["MUJOCO_GL"] = requested
    os.environ.setdefault("PYOPENGL_PLATFORM", requested)
    return requested


class CameraRenderer:
    """Renders named cameras of one model to uint8 (H, W, 3) upright RGB; one GL context, closed by ``close()``."""

    def __init__(self, model, height: int, width: int):
        import mujoco

        self._mujoco = mujoco
        try:
            self._renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as exc:  # GL context creation failure: name the backend
            raise RuntimeError(
                f"could not create a MuJoCo offscreen renderer ({height}x{width}) with "
                f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r}: {exc}. Try MUJOCO_GL=osmesa or egl; {_INSTALL_HINT}"
            ) from exc
        flags = self._renderer.scene.flags
        for name in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX", "mjRND_FOG"):
            flag = getattr(mujoco.mjtRndFlag, name, None)
            if flag is not None:
                flags[flag] = 0
        self.height, self.width = height, width

    def render(self, data, camera: str) -> np.ndarray:
        """Render ``camera`` for ``data`` -> uint8 (H, W, 3), a fresh array."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None and hasattr(renderer, "close"):
            renderer.close()

    def __del__(self):  # best effort; envs call close() explicitly
        try:
            self.close()
        except Exception:
            pass
