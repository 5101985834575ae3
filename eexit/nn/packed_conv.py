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

from typing import List, Optional, Sequence, Tuple

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


def _onednn_input(x: torch.Tensor) -> bool:
    """x a 4-D float32 CPU tensor, oneDNN built and enabled, and not while ``torch.compile`` traces
    (Inductor gets the plain convolution): what packing asks of x apart from its layout."""
    return (ONEDNN and x.dtype == torch.float32 and x.dim() == 4 and x.is_cpu
            and torch.backends.mkldnn.enabled and not torch.compiler.is_compiling())


def input_packs(x: torch.Tensor) -> bool:
    """Whether input ``x`` runs packed (given float32 parameters): a 4-D float32 CPU tensor dense in
    channels_last (and not also dense in NCHW, unless it has one pixel, where both layouts are the
    same memory), oneDNN built and enabled, and not while ``torch.compile`` traces."""
    return (_onednn_input(x) and x.is_contiguous(memory_format=torch.channels_last)
            and (x.shape[2] * x.shape[3] == 1 or not x.is_contiguous()))


def to_packing_layout(x: torch.Tensor) -> torch.Tensor:
    """x copied into channels_last where its layout is all that keeps it from :func:`input_packs` (a
    4-D float32 CPU tensor with more than one channel, not dense in channels_last), else x itself
    (a one-channel tensor is dense in both layouts and stays NCHW): for a network whose inference
    path runs channels_last throughout."""
    if _onednn_input(x) and x.shape[1] > 1 and not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _float32(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)


def packs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether a convolution of ``x`` with ``weight`` and ``bias`` runs packed: :func:`input_packs`
    and float32 parameters."""
    return _float32(weight, bias) and input_packs(x)


def _unpacked(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
              relu: bool) -> torch.Tensor:
    """``F.conv2d`` with conv's geometry and padding mode, then ReLU (in place) when ``relu``."""
    y = conv._conv_forward(x, weight, bias)
    return y.relu_() if relu else y


class PackedConv:
    """One convolution of a chain (:func:`run_chain`): ``conv``'s geometry with ``weight`` and
    ``bias`` (the module's own or folded ones, in the input's dtype), then ReLU when ``relu``.
    Runs packed where :func:`packable` and the input packs and fits, the weight packed on first
    use for that input's shape (reused at every batch size); else ``conv._conv_forward``."""

    __slots__ = ("conv", "weight", "bias", "relu", "post", "args", "fits", "packed")

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor], relu: bool) -> None:
        self.conv, self.weight, self.bias, self.relu = conv, weight, bias, relu
        self.post = "relu" if relu else "none"
        self.args: Optional[Tuple[List[int], List[int], List[int], int]] = None
        self.fits = (0, 0, 0)
        self.packed: Optional[torch.Tensor] = None
        if packable(conv) and _float32(weight, bias):
            padding, stride, dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
            self.args = (padding, stride, dilation, conv.groups)
            # input channels, and the least height and width the dilated kernel fits in
            self.fits = (weight.shape[1] * conv.groups, *(dilation[i] * (weight.shape[2 + i] - 1) + 1 - 2 * padding[i]
                                                          for i in (0, 1)))

    def run(self, x: torch.Tensor, packs_x: bool) -> Tuple[torch.Tensor, bool]:
        """(output, whether it ran packed) for x; ``packs_x``: :func:`input_packs` of x. Input that
        does not fit the weight (channels, or fewer pixels than the dilated kernel) runs
        ``F.conv2d``, for PyTorch's own error naming the sizes."""
        args = self.args
        if packs_x and args is not None and x.shape[1] == self.fits[0] and x.shape[2] >= self.fits[1] \
                and x.shape[3] >= self.fits[2]:
            if self.packed is None:
                self.packed = torch.ops.mkldnn._reorder_convolution_weight(self.weight.contiguous(), *args,
                                                                            list(x.shape))
            return _POINTWISE(x, self.packed, self.bias, *args, self.post, [], ""), True
        return _unpacked(x, self.conv, self.weight, self.bias, self.relu), False


_POINTWISE = torch.ops.mkldnn._convolution_pointwise.default if ONEDNN else None


def run_chain(x: torch.Tensor, chain: Sequence[PackedConv]) -> torch.Tensor:
    """The convolutions of ``chain`` one after the other on x (each feeding the next), packed where
    they can; output in x's memory format. Call under ``torch.no_grad()`` (inference only)."""
    nchw = x.is_contiguous()  # NCHW input, or a one-pixel one (the packed op returns channels_last)
    packed = input_packs(x)
    for conv in chain:
        x, ran_packed = conv.run(x, packed)
        packed = ran_packed or input_packs(x)
    return x.contiguous() if nchw else x


def conv2d_onednn(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  cache: FoldCache, name: str, sources: Sequence[torch.Tensor], relu: bool = False) -> torch.Tensor:
    """``conv``'s geometry applied to x with ``weight`` [C_out, C_in/groups, KH, KW] and ``bias``
    [C_out] (conv's own or folded ones), then ReLU when ``relu``: where :func:`packs`, a
    :class:`PackedConv` kept in ``cache[name]`` (rebuilt when one of ``sources``, the tensors
    ``weight`` and ``bias`` derive from, changes), else ``F.conv2d``. Output in x's memory format;
    call under ``torch.no_grad()`` (inference only)."""
    if not (packable(conv) and packs(x, weight, bias)):
        return _unpacked(x, conv, weight, bias, relu)
    return run_packed(cache.get(name, sources, lambda: PackedConv(conv, weight, bias, relu)), x)


def run_packed(unit: PackedConv, x: torch.Tensor) -> torch.Tensor:
    """``unit`` on x that :func:`packs` (checked by the caller), output in x's memory format (a
    one-pixel input is dense in both; the packed op returns channels_last)."""
    y, _ = unit.run(x, True)
    return y.contiguous() if x.is_contiguous() else y
