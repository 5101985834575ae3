"""Pooling with eexit's compute paths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eexit import ops
from eexit.nn.execution import ComputePathModule


class MaxPool2d(nn.MaxPool2d, ComputePathModule):
    """``nn.MaxPool2d`` (same arguments, no parameters or state) whose inference paths run
    :func:`eexit.ops.max_pool2d`, which equals ``F.max_pool2d`` bit for bit (NaN payloads aside) and
    is many times faster on CPU for NCHW tensors.

    The reference path (training, autograd) is ``F.max_pool2d``; every other path (``folded``,
    ``triton``, ``fast``: there is no Triton pooling kernel) runs the op. ``dilation`` must be 1 and
    ``return_indices`` False (ValueError otherwise); ``backend`` sets the compute path as for every
    :class:`~eexit.nn.ComputePathModule`. Input [N, C, H, W] or [C, H, W], float32/float64/float16/
    bfloat16; the output keeps a contiguous or channels_last input's memory format.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False, backend: str = "auto") -> None:
        if dilation not in (1, (1, 1), [1, 1]):
            raise ValueError(f"MaxPool2d: dilation must be 1 (eexit.ops.max_pool2d has none), got {dilation!r}")
        if return_indices:
            raise ValueError("MaxPool2d: return_indices must be False (eexit.ops.max_pool2d returns no indices); "
                             "use torch.nn.MaxPool2d for the indices")
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)  # then ComputePathModule
        self.set_backend(backend)

    def extra_repr(self) -> str:
        return f"{nn.MaxPool2d.extra_repr(self)}, {ComputePathModule.extra_repr(self)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolve_path(x) == "reference":
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
