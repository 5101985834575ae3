"""Device names from the command line, checked against what this machine has."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)`` if it exists here; ValueError naming it otherwise ('cpu', 'cuda', 'cuda:1')."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: {name!r} is not a device name (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (torch.cuda.is_available() "
                             "is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return device
