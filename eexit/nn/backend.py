"""Backend selection shared by eexit's modules.

Every module keeps ordinary ``nn.Conv2d``/``nn.BatchNorm2d`` children (same parameters and
state_dict in every backend); the backend only chooses how ``forward`` computes:

* ``"reference"``: plain PyTorch (``torch.cat``, autograd, training).
* ``"fused"``: the fast path for the tensor's device, BatchNorm folded from running statistics:
  Triton kernels on CUDA, PyTorch convolutions writing into preallocated buffers on CPU.
* ``"triton"``: the Triton kernels on any device (on CPU only under ``TRITON_INTERPRET=1``).
* ``"auto"`` (default): ``"fused"`` in eval mode with grad mode off (``torch.no_grad()`` or
  ``torch.inference_mode()``), ``"reference"`` otherwise.

``"fused"`` and ``"triton"`` are inference paths: they need eval mode and return outputs that
do not require grad.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Iterator, Sequence, Tuple

import torch
from torch import nn

BACKENDS = ("auto", "reference", "fused", "triton")


def check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Sets ``backend`` on every eexit module inside ``model`` (any nn.Module); returns model."""
    check_backend(backend)
    for m in model.modules():
        if isinstance(m, FusedModule):
            m.backend = backend
    return model


@contextlib.contextmanager
def restoring_backends(model: nn.Module) -> Iterator[nn.Module]:
    """Gives every eexit module inside ``model`` its backend back on leaving the block, whatever
    :func:`set_backend` calls happened inside it."""
    saved = [(m, m.backend) for m in model.modules() if isinstance(m, FusedModule)]
    try:
        yield model
    finally:
        for m, backend in saved:
            m.backend = backend


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


class FoldCache:
    """Values derived from parameters and buffers (folded BatchNorm), rebuilt whenever one of
    their sources changes: keyed on each source's version counter, storage and dtype."""

    def __init__(self) -> None:
        self._store: Dict[str, Tuple[tuple, object]] = {}

    def get(self, name: str, sources: Sequence[torch.Tensor], build: Callable[[], object]):
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in sources)
        hit = self._store.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, build())
            self._store[name] = hit
        return hit[1]

    def clear(self) -> None:
        self._store.clear()


class FusedModule(nn.Module):
    """Base class: a ``backend`` attribute, ``set_backend`` and a cache of folded weights."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self._fold = FoldCache()

    def set_backend(self, backend: str) -> "FusedModule":
        """Sets the backend of this module and every eexit module inside it."""
        return set_backend(self, backend)

    def train(self, mode: bool = True):
        self._fold.clear()  # folded weights are for eval mode only
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"

    def _path(self, x: torch.Tensor) -> str:
        """"reference", "torch" (folded BN, PyTorch convs into buffers) or "triton" for input x."""
        backend = self.backend
        if backend == "reference":
            return "reference"
        if backend == "auto":
            if self.training or torch.is_grad_enabled():
                return "reference"
            return "triton" if x.is_cuda and triton_usable(x.device) else "torch"
        if self.training:
            raise RuntimeError(
                f"backend {backend!r} is inference-only (BatchNorm is folded from running statistics): "
                "call .eval() first, or use backend='reference' to train"
            )
        if backend == "fused":
            return "triton" if x.is_cuda and triton_usable(x.device) else "torch"
        if not triton_usable(x.device):
            raise RuntimeError(
                f"backend 'triton' cannot run on {x.device} here: it needs CUDA and Triton, "
                "or TRITON_INTERPRET=1 on CPU"
            )
        return "triton"


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x (4-D) is laid out that way, else contiguous: every backend's output policy."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
