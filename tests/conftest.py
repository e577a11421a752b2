"""Shared test set-up: headless MuJoCo, pinned threads, deterministic torch. Set before anything imports mujoco."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests spawn workers; one thread each avoids oversubscription
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
