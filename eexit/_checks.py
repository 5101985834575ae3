"""Argument checks shared by the reference ops and the fake (meta) implementations.

They mirror csrc/checks.cpp so that every backend rejects the same inputs with
the same exception type (ValueError / TypeError / IndexError).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

CRITERIA = ("confidence", "entropy")
GATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_criterion(criterion: object) -> str:
    if not isinstance(criterion, str):
        raise TypeError(f"exit_gate: criterion must be a str, got {type(criterion).__name__}")
    if criterion not in CRITERIA:
        raise ValueError(f"exit_gate: criterion must be 'confidence' or 'entropy', got {criterion!r}")
    return criterion


def as_threshold(threshold: object) -> float:
    """A real number or one-element real tensor as a float; TypeError otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (numbers.Real, torch.Tensor)):
        raise TypeError(f"exit_gate: threshold must be a real number, got {type(threshold).__name__}")
    if isinstance(threshold, torch.Tensor):
        if threshold.numel() != 1 or threshold.is_complex() or threshold.dtype == torch.bool:
            raise TypeError(f"exit_gate: threshold must be a real scalar, got a tensor of shape {tuple(threshold.shape)}")
        threshold = threshold.item()
    return float(threshold)


def check_threshold(threshold: object, criterion: str) -> float:
    """Returns the threshold as a float; confidence needs [0, 1], entropy >= 0 (nats)."""
    t = as_threshold(threshold)
    if criterion == "confidence" and not 0.0 <= t <= 1.0:
        raise ValueError(f"exit_gate: threshold for criterion 'confidence' must be in [0, 1], got {t}")
    if criterion == "entropy" and not t >= 0.0:
        raise ValueError(f"exit_gate: threshold for criterion 'entropy' must be >= 0 (nats), got {t}")
    return t


def check_logits(logits: object) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"exit_gate: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"exit_gate: logits must have shape [N, C] (rank 2), got shape {tuple(logits.shape)}")
    if logits.dtype not in GATE_DTYPES:
        raise TypeError(f"exit_gate: logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"exit_gate: logits must have at least one class (C >= 1), got shape {tuple(logits.shape)}")


def check_gate_args(logits: object, threshold: object, criterion: object) -> float:
    """Validates exit_gate's arguments; returns the threshold as a float."""
    check_logits(logits)
    return check_threshold(threshold, check_criterion(criterion))


def check_compact_args(tensors: Sequence[torch.Tensor], index: torch.Tensor) -> None:
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("compact: tensors must be a list or tuple of tensors")
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"compact: index must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise TypeError(f"compact: index must be int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"compact: index must have rank 1, got shape {tuple(index.shape)}")
    for i, t in enumerate(tensors):
        if t.dim() < 1:
            raise ValueError(f"compact: tensors[{i}] must have rank >= 1 (rows on dim 0), got a scalar")
        if t.device != index.device:
            raise ValueError(f"compact: tensors[{i}] is on {t.device} but index is on {index.device}")


def check_append_args(buf, src, c0, pre=None, scale=None, shift=None) -> None:
    """append_channels' arguments (see :func:`eexit.reference.append_channels`)."""
    if not isinstance(buf, torch.Tensor) or not isinstance(src, torch.Tensor):
        raise TypeError("append_channels: buf and src must be torch.Tensors")
    if buf.dim() != 4:
        raise ValueError(f"append_channels: buf must have shape [N, C, H, W] (rank 4), got shape {tuple(buf.shape)}")
    if buf.dtype not in GATE_DTYPES:
        raise TypeError(f"append_channels: buf must be float32, float16 or bfloat16, got {buf.dtype}")
    if src.dim() != 4:
        raise ValueError(f"append_channels: src must have shape [N, C, H, W] (rank 4), got shape {tuple(src.shape)}")
    if src.dtype != buf.dtype:
        raise TypeError(f"append_channels: src must have buf's dtype {buf.dtype}, got {src.dtype}")
    if src.device != buf.device:
        raise ValueError(f"append_channels: src is on {src.device} but buf is on {buf.device}")
    if (src.shape[0], *src.shape[2:]) != (buf.shape[0], *buf.shape[2:]):
        raise ValueError(f"append_channels: src must have buf's batch and spatial sizes {tuple(buf.shape)}, "
                         f"got {tuple(src.shape)}")
    if isinstance(c0, bool) or not isinstance(c0, int):
        raise TypeError(f"append_channels: c0 must be an int, got {type(c0).__name__}")
    c = c0 + src.shape[1]
    if c0 < 0 or c > buf.shape[1]:
        raise ValueError(f"append_channels: the window [c0, c0 + C_src) = [{c0}, {c}) must lie within buf's "
                         f"{buf.shape[1]} channels")
    if torch._debug_has_internal_overlap(buf) == 1:
        raise ValueError("append_channels: buf must not have overlapping elements (e.g. an expanded tensor)")
    if torch._C._is_alias_of(src, buf):
        raise ValueError("append_channels: src must not share memory with buf")
    given = [t is not None for t in (pre, scale, shift)]
    if any(given) and not all(given):
        raise ValueError("append_channels: pre, scale and shift must be given together")
    if pre is None:
        return
    if not all(isinstance(t, torch.Tensor) for t in (pre, scale, shift)):
        raise TypeError("append_channels: pre, scale and shift must be torch.Tensors")
    if pre.dtype != buf.dtype:
        raise TypeError(f"append_channels: pre must have buf's dtype {buf.dtype}, got {pre.dtype}")
    if pre.device != buf.device:
        raise ValueError(f"append_channels: pre is on {pre.device} but buf is on {buf.device}")
    want = (buf.shape[0], c, *buf.shape[2:])
    if tuple(pre.shape) != want:
        raise ValueError(f"append_channels: pre must have shape [{', '.join(map(str, want))}] (c0 + C_src channels), "
                         f"got {tuple(pre.shape)}")
    if torch._debug_has_internal_overlap(pre) == 1:
        raise ValueError("append_channels: pre must not have overlapping elements (e.g. an expanded tensor)")
    if torch._C._is_alias_of(pre, buf) or torch._C._is_alias_of(pre, src):
        raise ValueError("append_channels: pre must not share memory with buf or src")
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dtype != torch.float32:
            raise TypeError(f"append_channels: {name} must be float32, got {t.dtype}")
        if tuple(t.shape) != (c,):
            raise ValueError(f"append_channels: {name} must have shape [{c}] (c0 + C_src), got {tuple(t.shape)}")
        if t.device != buf.device:
            raise ValueError(f"append_channels: {name} is on {t.device} but buf is on {buf.device}")


def row_memory_format(t: torch.Tensor) -> torch.memory_format:
    """compact()'s output format for t: its own when dense (contiguous or channels_last), else contiguous."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
