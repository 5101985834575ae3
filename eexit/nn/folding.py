"""Inference-time BatchNorm folding."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


def bn_affine(bn: nn.BatchNorm2d, bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 (scale, shift) [C] with ``bn(y + bias) == y * scale + shift`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    scale = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -bn.running_mean.float() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.float()
    if bias is not None:
        shift = shift + bias.float() * scale
    return scale, shift


def bn_sources(bn: nn.BatchNorm2d):
    """The tensors a fold of bn depends on (for FoldCache keys)."""
    return [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv equal to conv followed by bn (eval), weight in ``dtype``."""
    scale, shift = bn_affine(bn, conv.bias)
    weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    return weight.to(dtype), shift.to(dtype)
