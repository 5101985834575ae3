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


def row_memory_format(t: torch.Tensor) -> torch.memory_format:
    """compact()'s output format for t: its own when dense (contiguous or channels_last), else contiguous."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
