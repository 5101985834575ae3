"""A Conv2d whose inference path runs eexit's direct convolution where it is measured faster."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from eexit import ops
from eexit._checks import FLOAT_DTYPES
from eexit.nn.execution import ComputePathModule, FoldCache, grad_off
from eexit.nn.packed_conv import conv2d_onednn, packable, packs

#: C_in * KH * KW up to which the direct convolution is used at any batch size (one input
#: channel 5x5, two channels 3x3): oneDNN's GEMM has almost no reduction depth there.
DIRECT_MAX_TAPS = 25
#: Multiply-adds of one call up to which the direct convolution is used whatever the channels
#: (NCHW or channels_last input): small batches, where oneDNN's per-call set-up dominates.
DIRECT_MAX_MACS = 4_000_000
#: The output width (columns) from which the DIRECT_MAX_MACS clause holds for NCHW input. The
#: direct kernel's vectors run along output rows, so narrower rows leave lanes idle (at 1 column
#: F.conv2d is 2.3x faster).
DIRECT_MIN_WIDTH = 2
#: The same for input that runs oneDNN with a packed weight (channels_last float32). The packed
#: convolution is 1.4-9x faster on 1-4 columns, even at 6 and 1.2x slower at 8.
DIRECT_MIN_WIDTH_PACKED = 8


def direct_taps(conv: nn.Conv2d) -> int:
    """``C_in * KH * KW`` of ``conv`` when the direct op takes its geometry (stride 1, dilation 1,
    one group, zero padding given as ints), else 0."""
    if not (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and packable(conv)):
        return 0
    kh, kw = conv.kernel_size
    return conv.in_channels * kh * kw


def direct_conv_pays(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether :func:`eexit.ops.direct_conv2d` beats ``F.conv2d`` for ``conv`` on ``x``, by the rule
    measured on a 2-core AMD EPYC with torch 2.14.1 (``benchmarks/results/direct_conv-cpu-2026-12-04.md``):
    a 4-D CPU float tensor, stride 1, dilation 1, one group, zero padding given as ints, and either
    ``C_in * KH * KW <= DIRECT_MAX_TAPS`` or at most ``DIRECT_MAX_MACS`` multiply-adds on output
    rows at least ``DIRECT_MIN_WIDTH`` wide (``DIRECT_MIN_WIDTH_PACKED`` where the alternative is
    the packed oneDNN convolution, :func:`~eexit.nn.packed_conv.packs`). Larger layers at larger
    batches run faster in oneDNN (up to 2-4x). Called on every forward: cheap checks first."""
    if not (x.is_cpu and x.dim() == 4 and x.dtype in FLOAT_DTYPES):
        return False
    taps = direct_taps(conv)
    if not taps:
        return False
    if taps <= DIRECT_MAX_TAPS:
        return True
    kh, kw = conv.kernel_size
    n, _, h, w = x.shape
    w_out = w + 2 * conv.padding[1] - kw + 1
    if w_out < DIRECT_MIN_WIDTH or (w_out < DIRECT_MIN_WIDTH_PACKED and packs(x, conv.weight, conv.bias)):
        return False
    return n * (h + 2 * conv.padding[0] - kh + 1) * w_out * conv.out_channels * taps <= DIRECT_MAX_MACS


class Conv2d(nn.Conv2d, ComputePathModule):
    """``nn.Conv2d`` (same arguments, parameters and state_dict) whose inference paths run
    :func:`eexit.ops.direct_conv2d` where :func:`direct_conv_pays` says it is faster (few
    channels, small batches, on CPU) and ``F.conv2d`` everywhere else, with the weight packed once
    for oneDNN on channels_last float32 CPU input (:mod:`eexit.nn.packed_conv`).

    The reference path (training, autograd) is ``F.conv2d``; every other path (``folded``,
    ``triton``, ``fast``) applies the rule. ``backend`` sets the compute path as for every
    :class:`~eexit.nn.ComputePathModule`. Input [N, C_in, H, W] (3-D inputs run ``F.conv2d``); under
    ``torch.autocast`` input and parameters are cast to its dtype first, as autocast does for ``F.conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)  # then ComputePathModule
        self.set_backend(backend)

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {ComputePathModule.extra_repr(self)}"

    @property
    def compiled_as_op(self) -> bool:
        """True where the rule picks the direct op at every batch size (``C_in * KH * KW <=
        DIRECT_MAX_TAPS`` and the op's geometry): the choice then does not depend on the batch, so
        :func:`eexit.compile` keeps the op in its graphs (2-5x oneDNN there) with no guard on the
        batch size. Other layers compile as plain convolutions."""
        return 0 < direct_taps(self) <= DIRECT_MAX_TAPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolve_path(x) == "reference":
            return self._conv_forward(x, self.weight, self.bias)
        sources = [self.weight] if self.bias is None else [self.weight, self.bias]
        with grad_off():
            return conv2d_inference(x, self, self.weight, self.bias, self._fold, "packed", sources)


def conv2d_inference(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     cache: FoldCache, name: str, sources: Sequence[torch.Tensor]) -> torch.Tensor:
    """``conv``'s geometry (stride, padding, dilation, groups, padding mode) applied with ``weight``
    and ``bias`` (its own, or folded ones of the same shapes) on an inference path:
    :func:`eexit.ops.direct_conv2d` where :func:`direct_conv_pays`, else
    :func:`~eexit.nn.packed_conv.conv2d_onednn` (the weight packed into ``cache[name]`` on
    channels_last float32 input; ``sources``: the tensors weight and bias derive from). Under CPU
    autocast x, weight and bias are cast to its dtype first, as autocast does for ``F.conv2d``."""
    if not x.is_cpu:  # the direct convolution is a CPU op
        return conv._conv_forward(x, weight, bias)
    if torch.is_autocast_enabled("cpu"):  # what autocast does for F.conv2d: all in its dtype
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if not direct_conv_pays(x, conv):
        return conv2d_onednn(x, conv, weight, bias, cache, name, sources)
    return ops.direct_conv2d(x, weight, bias, conv.padding)
