"""How eexit's modules run: two settings, each named for what runs, and one switch for both.

**Compute path** (``compute_path`` of every :class:`ComputePathModule`: the conv stacks and dense
blocks). The modules keep ordinary ``nn.Conv2d``/``nn.BatchNorm2d`` children, so parameters and
state_dict are the same on every path; the path only decides how ``forward`` computes:

============  ===================================================================================
path          what runs
============  ===================================================================================
reference     the child modules as written (``torch.cat``, autograd): training, and the reference
folded        BatchNorm folded from running statistics into PyTorch convolutions, which write into
              preallocated concat buffers (:func:`eexit.ops.append_channels`)
triton        the Triton kernels of :mod:`eexit.kernels` (CUDA; CPU only under TRITON_INTERPRET=1)
fast          ``folded``: the fastest path measured on CPU and on CUDA (on an H200 the Triton
              dense block ran at 0.59x the reference, fp16, see the README), so ``triton``
              runs only when asked for
auto          ``fast`` in eval mode with grad mode off (``torch.no_grad()``/``inference_mode()``),
              ``reference`` otherwise (the default)
============  ===================================================================================

``folded``, ``triton`` and ``fast`` are inference paths: they need eval mode and return outputs
that do not require grad.

**Gate ops** (``gate_ops`` of every :class:`~eexit.nn.EarlyExitModel`): which implementation of
the exit gate and compaction :meth:`~eexit.nn.EarlyExitModel.infer` calls between stages:
``"fused"`` (:mod:`eexit.ops`, the compiled extension) or ``"reference"`` (:mod:`eexit.reference`).

**The switch** :func:`set_backend` sets both for the common cases:

=========  ==============  ==========
backend    compute path    gate ops
=========  ==============  ==========
auto       auto            fused
fused      fast            fused
triton     triton          fused
reference  reference       reference
=========  ==============  ==========

:func:`set_compute_path` and :func:`set_gate_ops` set one of them alone.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager, Dict, Iterator, Sequence, Tuple

import torch
from torch import nn

COMPUTE_PATHS = ("auto", "reference", "folded", "triton", "fast")
GATE_OPS = ("fused", "reference")
#: backend -> (compute path, gate ops)
BACKENDS: Dict[str, Tuple[str, str]] = {
    "auto": ("auto", "fused"),
    "fused": ("fast", "fused"),
    "triton": ("triton", "fused"),
    "reference": ("reference", "reference"),
}


def _check_choice(what: str, value: object, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_backend(backend: object) -> str:
    return _check_choice("backend", backend, BACKENDS)


def check_compute_path(path: object) -> str:
    return _check_choice("compute_path", path, COMPUTE_PATHS)


def check_gate_ops(gate_ops: object) -> str:
    return _check_choice("gate_ops", gate_ops, GATE_OPS)


def _settings(model: nn.Module) -> Iterator[Tuple[nn.Module, str]]:
    """(module, attribute) of every setting inside ``model``."""
    from eexit.nn.early_exit import EarlyExitModel  # it builds on this module

    for m in model.modules():
        if isinstance(m, ComputePathModule):
            yield m, "compute_path"
        if isinstance(m, EarlyExitModel):
            yield m, "gate_ops"


def _set(model: nn.Module, attr: str, value: str) -> nn.Module:
    for m, a in _settings(model):
        if a == attr:
            setattr(m, attr, value)
    return model


def set_compute_path(model: nn.Module, path: str) -> nn.Module:
    """Sets ``compute_path`` on every eexit compute module inside ``model`` (any nn.Module); returns model."""
    return _set(model, "compute_path", check_compute_path(path))


def set_gate_ops(model: nn.Module, gate_ops: str) -> nn.Module:
    """Sets ``gate_ops`` on every early-exit model inside ``model``; returns model."""
    return _set(model, "gate_ops", check_gate_ops(gate_ops))


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Sets the compute path and the gate ops of every eexit module inside ``model`` (any
    nn.Module) from one of :data:`BACKENDS`; returns model."""
    path, gate_ops = BACKENDS[check_backend(backend)]
    return set_gate_ops(set_compute_path(model, path), gate_ops)


@contextlib.contextmanager
def restoring_backends(model: nn.Module) -> Iterator[nn.Module]:
    """Gives every eexit module inside ``model`` its compute path and gate ops back on leaving
    the block, whatever was set inside it."""
    saved = [(m, attr, getattr(m, attr)) for m, attr in _settings(model)]
    try:
        yield model
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` here."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def grad_off() -> ContextManager:
    """``torch.no_grad()`` where grad mode is on, else a no-op context (entering ``no_grad`` costs
    about 1 µs, felt by the per-call inference paths at batch 1)."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


class FoldCache:
    """Values derived from parameters and buffers (folded BatchNorm), rebuilt whenever one of
    their sources changes: keyed on each source's version counter, data pointer and dtype (a
    move to another device moves the data: host and device pointers share one address space)."""

    def __init__(self) -> None:
        self._store: Dict[str, Tuple[list, object]] = {}

    def get(self, name: str, sources: Sequence[torch.Tensor], build: Callable[[], object]):
        key = [(t._version, t.data_ptr(), t.dtype) for t in sources]
        hit = self._store.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, build())
            self._store[name] = hit
        return hit[1]

    def clear(self) -> None:
        self._store.clear()

    def __deepcopy__(self, memo) -> "FoldCache":
        return FoldCache()  # derived values (some, oneDNN's packed weights, cannot be copied)

    def __getstate__(self) -> dict:
        return {"_store": {}}  # pickled empty, for the same reason


class ComputePathModule(nn.Module):
    """Base of modules with several compute paths (see the module docstring): a ``compute_path``
    setting, its resolution for an input (:meth:`resolve_path`) and a cache of folded weights.

    ``backend`` (constructor and :meth:`set_backend`) is the common switch; it sets compute_path.
    ``compiled_as_op``: True for a module whose inference path is one eexit custom op that
    ``torch.compile`` keeps as one opaque call and that beats what Inductor makes of the reference
    path; :func:`eexit.compile` leaves such modules on their compute path.
    """

    compiled_as_op = False

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.compute_path = BACKENDS[check_backend(backend)][0]
        self._fold = FoldCache()

    def set_backend(self, backend: str) -> "ComputePathModule":
        """:func:`set_backend` on this module and every eexit module inside it."""
        return set_backend(self, backend)

    def train(self, mode: bool = True):
        self._fold.clear()  # folded weights are for eval mode only
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"compute_path={self.compute_path!r}"

    def resolve_path(self, x: torch.Tensor) -> str:
        """What runs for input ``x``: "reference", "folded" or "triton"."""
        path = check_compute_path(self.compute_path)
        if path == "reference":
            return "reference"
        if path == "auto":
            if self.training or torch.is_grad_enabled():
                return "reference"
            path = "fast"
        elif self.training:
            raise RuntimeError(
                f"compute path {path!r} is inference-only (BatchNorm is folded from running statistics): "
                "call .eval() first, or use backend='reference' to train"
            )
        if path == "fast":
            return "folded"
        if path == "triton" and not triton_usable(x.device):
            raise RuntimeError(
                f"compute path 'triton' cannot run on {x.device} here: it needs CUDA and Triton, "
                "or TRITON_INTERPRET=1 on CPU"
            )
        return path
