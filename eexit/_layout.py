"""The memory-format rule shared by every op and module: outputs keep their input's layout."""
from __future__ import annotations

import torch


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """t's own memory format when t is dense in it: contiguous, else channels_last (4-D) or
    channels_last_3d (5-D); contiguous for any other layout (a view with gaps, a permutation)."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
