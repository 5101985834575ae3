"""Local response normalisation with eexit's compute paths."""
from __future__ import annotations

import torch
from torch import nn

from eexit import ops
from eexit.nn.execution import ComputePathModule


class LocalResponseNorm(nn.LocalResponseNorm, ComputePathModule):
    """``nn.LocalResponseNorm(size, alpha, beta, k)`` (same arguments and semantics, no parameters)
    for images [N, C, H, W] (other ranks run PyTorch's), any memory format kept.

    The reference path (training, autograd) sums the window over shifted channel slices of
    ``x * x``: a few elementwise passes instead of PyTorch's padded ``avg_pool3d``, which on a 2-core
    CPU made B-ResNet-110's first exit cost about a third of a stage. Every other path (``folded``,
    ``triton``, ``fast``) runs :func:`eexit.ops.local_response_norm` on CPU, one pass (float32 math,
    one rounding), and the slices elsewhere. ``backend`` sets the compute path as for every
    :class:`~eexit.nn.ComputePathModule`. :func:`eexit.compile` keeps its compute path (the op stays
    one call in the compiled graphs: 1.8-6.6x Inductor's code for ``F.local_response_norm``).
    """

    compiled_as_op = True

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                 backend: str = "auto") -> None:
        super().__init__(size, alpha, beta, k)  # then ComputePathModule
        self.set_backend(backend)

    def extra_repr(self) -> str:
        return f"{nn.LocalResponseNorm.extra_repr(self)}, {ComputePathModule.extra_repr(self)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        # resolved on every device, so that an inference-only path refuses training everywhere
        if self.resolve_path(x) != "reference" and x.is_cpu:
            return ops.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        sq = x * x
        s = sq.clone()
        for j in range(1, self.size // 2 + 1):  # channels c - j, zero before the first
            s[:, j:] += sq[:, :-j]
        for j in range(1, (self.size - 1) // 2 + 1):  # channels c + j, zero after the last
            s[:, :-j] += sq[:, j:]
        return x * s.mul_(self.alpha / self.size).add_(self.k).pow_(-self.beta)
