"""Execution engines for frozen backbones: the same function as the PyTorch module, computed faster.

An engine changes how a frozen backbone's forward is *computed*, never what it computes (within float32 rounding),
so it is not part of an encoder's ``config`` or ``config_hash`` (cached features stay valid whatever the engine).

- ``"torch"``: the plain PyTorch module, eager, default memory layout (the reference).
- ``"fused"``: PyTorch with every conv+BatchNorm pair folded into one conv (``torch.fx`` ``fuse``) and
  ``channels_last`` activations. Needs only torch.
- ``"openvino"``: the backbone converted once to an OpenVINO model (``openvino.convert_model``, dynamic batch and
  tile size) and run by OpenVINO's CPU plugin in float32 (``INFERENCE_PRECISION_HINT=f32``: on CPUs with AMX or
  AVX512-BF16 the plugin's default would be bf16, which does not hold parity), with as many threads as torch used
  at its first call.
  Needs ``openvino`` (in ``requirements-lock.txt``; elsewhere ``pip install 's2robot[openvino]'``).
- ``"auto"`` (default): ``openvino`` when installed (it is in ``requirements-lock.txt``), else ``fused``, for a
  frozen backbone that supports engines (``supports_engines = True``: the torchvision CNN trunks,
  EfficientNet-Lite) on the CPU; ``torch`` otherwise (trainable encoders, CUDA, ViTs). ``S2ROBOT_NO_OPENVINO=1``
  makes ``auto`` pick ``fused``. All OpenVINO models share one ``openvino.Core`` (:func:`_openvino_core`: a Core
  per model, freed out of order, left the thread on a freed signal stack).

bf16 is not used: on this project's AMX CPU it ran ~1.6x float32 (PyTorch and OpenVINO) but moved MobileNetV2
maps by up to 0.15 (~6 % of their norm), no parity. ``torch.compile`` is not used either (docs/encoders.md has
both measurements).

The compiled form is built lazily on first use and rebuilt when a weight changes (in place: ``copy_`` and
``load_state_dict`` bump the tensors' version counters; moved or converted: its storage changes) or the input
device changes (OpenVINO keeps the torch thread count of its first use: torch's count is per thread, and a rebuild
whenever a call came from another thread would ping-pong); :class:`~s2robot.encoders.base.S2Encoder` also drops it on any
``load_state_dict``. A ``.to()`` that changes nothing keeps it. It is a plain attribute, never a
sub-module, so state dicts are unchanged, and it is dropped on pickling/deepcopy.
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib.util
import itertools
import warnings
from typing import Callable

import torch
import torch.fx
from torch import nn

__all__ = ["ENGINES", "resolve_engine", "openvino_available", "EngineRunner"]

ENGINES = ("auto", "torch", "fused", "openvino")


def openvino_unavailable_reason() -> str | None:
    """Why the ``openvino`` engine cannot run here (one line: not installed, or switched off by
    ``S2ROBOT_NO_OPENVINO=1``), or None when it can."""
    import os

    if importlib.util.find_spec("openvino") is None:
        return "engine='openvino' needs the openvino package: pip install 's2robot[openvino]'"
    if os.environ.get("S2ROBOT_NO_OPENVINO", "0") not in ("", "0"):
        return "engine='openvino' is switched off by S2ROBOT_NO_OPENVINO; unset it or pick engine='fused'"
    return None


def openvino_available() -> bool:
    """True when the ``openvino`` package is importable and not switched off (``S2ROBOT_NO_OPENVINO=1``)."""
    return openvino_unavailable_reason() is None


def require_openvino(device: torch.device, what: str) -> None:
    """Raise ValueError (one line) where an explicit ``engine='openvino'`` cannot run ``what`` (e.g. "the encoder"),
    which sits on ``device``: not on the CPU, OpenVINO not installed or switched off."""
    if device.type != "cpu":
        raise ValueError(f"engine='openvino' runs on the CPU, but {what} is on {device}")
    reason = openvino_unavailable_reason()
    if reason:
        raise ValueError(reason)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {ENGINES}")
    return engine


def resolve_engine(engine: str, adapter: nn.Module, trainable: str, device: torch.device) -> str:
    """The engine that runs ``adapter`` now: ``auto`` resolved, explicit requests checked (one-line errors)."""
    check_engine(engine)
    if engine == "torch":
        return "torch"
    supported = bool(getattr(adapter, "supports_engines", False))
    if engine == "auto":
        if trainable != "frozen" or device.type != "cpu" or not supported:
            return "torch"
        return "openvino" if openvino_available() else "fused"
    if trainable != "frozen":
        raise ValueError(f"engine={engine!r} runs frozen encoders only (trainable={trainable!r}); use engine='torch'")
    if not supported:
        raise ValueError(f"engine={engine!r} supports the torchvision CNN trunks (resnet18, mobilenet_v2) and "
                         f"efficientnet_lite* only; use engine='torch' or 'auto' for {type(adapter).__name__}")
    if engine == "openvino":
        require_openvino(device, "the encoder")
    return engine


def _weights_state(tensors: list[torch.Tensor]) -> tuple:
    """Storage + version counter of each tensor: changes when a weight is replaced, moved or edited in place."""
    key = []
    for t in tensors:
        try:
            version = t._version
        except RuntimeError:  # inference tensors have no version counter
            version = -1
        key.append((t.data_ptr(), version))
    return tuple(key)


class _ConvBnLeafTracer(torch.fx.Tracer):
    """``torch.fx`` tracer that keeps every Conv2d/BatchNorm2d subclass a leaf (e.g. timm's ``Conv2dSame``, whose
    forward computes TF "SAME" padding from the input size, and ``BatchNormAct2d``)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def _bn_tail(bn: nn.Module) -> nn.Module | None:
    """What is left of a BatchNorm module once its affine normalisation is folded into the conv before it:
    nothing (``nn.BatchNorm2d``), timm ``BatchNormAct2d``'s dropout + activation, or ``None``: do not fold."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if type(bn) is BatchNormAct2d:  # forward: batch_norm -> drop -> act
        return nn.Sequential(bn.drop, bn.act)
    return None


def _fold_conv_bn(module: nn.Module) -> torch.fx.GraphModule:
    """Trace ``module`` (eval mode) and fold every BatchNorm that only follows a Conv2d into that conv.

    Like ``torch.fx.experimental.optimization.fuse``, but Conv2d/BatchNorm2d subclasses count too, so timm's
    EfficientNet (TF "SAME"-padded convs, BN+activation modules) folds as well as torchvision's CNNs.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    graph = _ConvBnLeafTracer().trace(module)
    modules = dict(module.named_modules())
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")  # shared modules stay
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d) or len(node.args) != 1:
            continue
        conv_node = node.args[0]
        if not (isinstance(conv_node, torch.fx.Node) and conv_node.op == "call_module"
                and isinstance(modules[conv_node.target], nn.Conv2d) and len(conv_node.users) == 1):
            continue
        bn, tail = modules[node.target], _bn_tail(modules[node.target])
        if tail is None or not bn.track_running_stats or calls[node.target] > 1 or calls[conv_node.target] > 1:
            continue
        _set_module(module, conv_node.target, fuse_conv_bn_eval(modules[conv_node.target], bn))
        if isinstance(tail, nn.Identity):
            node.replace_all_uses_with(conv_node)
            graph.erase_node(node)
        else:
            _set_module(module, node.target, tail)
    return torch.fx.GraphModule(module, graph)


def _set_module(root: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _fuse(adapter: nn.Module) -> nn.Module:
    """A folded copy: conv+BN pairs merged (``torch.fx``), ``channels_last`` weights, eval mode."""
    fused = _fold_conv_bn(copy.deepcopy(adapter).eval())
    return fused.to(memory_format=torch.channels_last).eval()


@functools.lru_cache(maxsize=None)
def _openvino_core():
    """The process's one ``openvino.Core``, created on first use and kept until exit.

    Each ``Core`` loads its own CPU plugin, which installs an alternate signal stack on the calling thread and, when
    destroyed, puts back the one it found. Cores created per model and garbage-collected in another order than
    they were made (two encoders: A, B, then A freed before B) leave the thread on a freed stack, and the next signal
    handler that runs on it writes into freed memory: with openvino 2026.4.1 the test suite died of a segfault in
    ``PyObject_IsTrue``, or of a SIGSEGV (``SI_KERNEL``) when a SIGCHLD arrived in ``subprocess.run``. One Core,
    as OpenVINO itself recommends, loads the plugin once.
    """
    import openvino as ov

    return ov.Core()


class _OpenVinoModel:
    """An OpenVINO float32 CPU model of a frozen module: float32 tensors in, the module's first output out.

    ``dynamic`` lists, per input, the dimensions left free (any size, one compiled model; the others keep the
    example's sizes); ``None`` compiles one model per set of input shapes instead (the last
    :attr:`MAX_SHAPES` kept): compiling is ~0.1 s once converted, and at the U-Net's small sizes a static model
    ran a step 2x faster than a dynamic one (1.3 vs 2.7 ms at batch 1), while the encoder trunks ran within 5 %.
    """

    MAX_SHAPES = 8

    def __init__(self, module: nn.Module, examples: tuple[torch.Tensor, ...], threads: int,
                 dynamic: tuple[tuple[int, ...], ...] | None) -> None:
        import openvino as ov

        examples = tuple(e[:1].float().contiguous() for e in examples)
        with warnings.catch_warnings():  # convert_model traces with torch.jit.trace, deprecated in torch 2.x
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.trace")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks taken as constants
            self.model = ov.convert_model(copy.deepcopy(module).eval(),
                                          example_input=examples[0] if len(examples) == 1 else examples)
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads),
                       "PERFORMANCE_HINT": "LATENCY"}
        self.dynamic = dynamic
        self.requests: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        if dynamic is not None:
            self.requests[()] = self._compile([[-1 if d in free else n for d, n in enumerate(e.shape)]
                                               for e, free in zip(examples, dynamic)])

    def _compile(self, shapes: list[list[int]]):
        model = self.model.clone()
        model.reshape(dict(enumerate(shapes)))
        return _openvino_core().compile_model(model, "CPU", self.config).create_infer_request()

    def _request(self, arrays: list) -> object:
        if self.dynamic is not None:
            return self.requests[()]
        key = tuple(a.shape for a in arrays)
        if key in self.requests:
            self.requests.move_to_end(key)
        else:
            self.requests[key] = self._compile([list(k) for k in key])
            if len(self.requests) > self.MAX_SHAPES:
                self.requests.popitem(last=False)
        return self.requests[key]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = [x.detach().float().contiguous().numpy() for x in inputs]
        out = self._request(arrays).infer(arrays, share_inputs=True)  # outputs are copied out of the request
        return torch.from_numpy(out[0])


class EngineRunner:
    """Callable that runs the frozen ``module`` on ``engine`` (``fused``/``openvino``): the same inputs and output.

    ``dynamic``: per input, the dimensions whose size may change between calls (OpenVINO compiles one model for
    all of them); the default, a backbone's (n, 3, h, w) images with any batch and tile size; ``None``, a model
    per set of input shapes (:class:`_OpenVinoModel`). ``fused`` takes one 4-D input (a conv+BN trunk).
    Not thread-safe: one caller at a time (OpenVINO keeps one infer request per compiled model).
    """

    def __init__(self, module: nn.Module, engine: str,
                 dynamic: tuple[tuple[int, ...], ...] | None = ((0, 2, 3),)) -> None:
        if engine not in ("fused", "openvino"):
            raise ValueError(f"EngineRunner runs 'fused' or 'openvino', got {engine!r}")
        self.module, self.engine, self.dynamic = module, engine, dynamic
        self._key: tuple | None = None
        self._tensors: list[torch.Tensor] = []
        self._run: Callable[..., torch.Tensor] | None = None

    def _current_key(self, x: torch.Tensor) -> tuple:
        """What the compiled form depends on; the tensor list is re-read only when the cheap check fails."""
        return (x.device, len(self._tensors), _weights_state(self._tensors))

    def _build(self, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.engine == "fused":
            self._run = _fuse(self.module)
        else:
            self._run = _OpenVinoModel(self.module, inputs, torch.get_num_threads(), self.dynamic)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if self._key is None or self._current_key(x) != self._key:
            self._run, self._key = None, None
            # parameters and buffers are re-collected: ``.to()`` may have replaced buffer objects
            self._tensors = list(itertools.chain(self.module.parameters(), self.module.buffers()))
            self._build(inputs)
            self._key = self._current_key(x)
        if self.engine == "fused":
            return self._run(x.contiguous(memory_format=torch.channels_last))
        return self._run(*inputs).to(x.device)
