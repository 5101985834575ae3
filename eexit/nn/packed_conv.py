"""oneDNN convolutions with the weight packed once, for CPU inference on channels_last float32 input.

``F.conv2d`` on a channels_last CPU tensor gives oneDNN a plain OIHW weight, which oneDNN reorders
into its blocked layout on every call. For layers with many channels and few pixels the reorder
costs more than the convolution (a 512-channel 3x3 on 2x2 pixels at batch 4, 2 threads: 3.8 ms
against 0.34 ms with the weight packed; ``benchmarks/results/packed_conv-cpu-2026-12-05.md``), and
early exit runs the deep stages on exactly such small batches. The inference paths pack each
weight once (the module's :class:`~eexit.nn.execution.FoldCache`, rebuilt when a source tensor
changes) and call oneDNN with it, fusing a following ReLU into the convolution.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from eexit.nn.execution import FoldCache


def _onednn_ops() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise") \
            and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    except (AttributeError, RuntimeError):
        return False


#: Whether this PyTorch has oneDNN and the ops that run packed weights.
ONEDNN = _onednn_ops()


def packable(conv: nn.Conv2d) -> bool:
    """Whether ``conv``'s padding can run packed (and direct, :func:`eexit.nn.direct_conv.direct_taps`):
    zero padding given as ints (the tuple ``nn.Conv2d`` stores; not "same" or "valid")."""
    return conv.padding_mode == "zeros" and type(conv.padding) is tuple


def packs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether a convolution of ``x`` with ``weight`` and ``bias`` runs packed: x a 4-D float32
    CPU tensor dense in channels_last (and not also dense in NCHW, unless it has one pixel, where
    both layouts are the same memory), float32 parameters, oneDNN built and enabled, and not
    while ``torch.compile`` traces (Inductor gets the plain convolution). Cheap checks first."""
    return (
        ONEDNN and x.dtype == torch.float32 and x.dim() == 4 and x.is_cpu
        and x.is_contiguous(memory_format=torch.channels_last)
        and (x.shape[2] * x.shape[3] == 1 or not x.is_contiguous())
        and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
        and torch.backends.mkldnn.enabled and not torch.compiler.is_compiling()
    )


def conv2d_onednn(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  cache: FoldCache, name: str, sources: Sequence[torch.Tensor], relu: bool = False) -> torch.Tensor:
    """``conv``'s geometry applied to x with ``weight`` [C_out, C_in/groups, KH, KW] and ``bias``
    [C_out] (conv's own or folded ones), then ReLU when ``relu``: with the weight packed for oneDNN
    where :func:`packs` (packed once into ``cache[name]``, rebuilt when one of ``sources``, the
    tensors ``weight`` and ``bias`` derive from, changes), else ``F.conv2d``. Output in x's memory
    format; call under ``torch.no_grad()`` (inference only)."""
    if not (packable(conv) and packs(x, weight, bias)):
        y = conv._conv_forward(x, weight, bias)  # F.conv2d with conv's geometry and padding mode
        return y.relu_() if relu else y
    return conv2d_packed(x, conv, weight, bias, cache, name, sources, relu)


def conv2d_packed(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  cache: FoldCache, name: str, sources: Sequence[torch.Tensor], relu: bool = False) -> torch.Tensor:
    """:func:`conv2d_onednn`'s packed path, for a caller that has checked :func:`packable` and
    :func:`packs` already (same arguments and result). Input that does not fit the weight (its
    channels, or pixels fewer than the dilated kernel) goes to ``F.conv2d``, for PyTorch's own error
    naming the sizes (oneDNN's says only that it has no primitive)."""
    padding, stride, dilation, groups = list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
    if x.shape[1] != weight.shape[1] * groups or any(
            x.shape[2 + i] + 2 * padding[i] < dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in (0, 1)):
        return conv._conv_forward(x, weight, bias)
    packed = cache.get(name, sources, lambda: torch.ops.mkldnn._reorder_convolution_weight(
        weight.contiguous(), padding, stride, dilation, groups, list(x.shape)))
    y = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, padding, stride, dilation, groups,
                                                "relu" if relu else "none", [], "")
    return y.contiguous() if x.is_contiguous() else y  # a one-pixel input: keep NCHW
