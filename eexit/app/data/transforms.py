"""Batched tensor transforms (no PIL): fit images to a model's input, and augment them."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "shift", "crop-flip")


def to_model_input(x: Tensor, shape: Tuple[int, int, int], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Images float [B, C, H, W] in [0, 1] -> the model's normalised input, contiguous float32
    [B, C', H', W'] for ``shape`` = (C', H', W').

    Each channel is normalised, ``(x - mean[c]) / std[c]`` (``mean``, ``std``: length C, the data's
    statistics); (H, W) != (H', W') is resized bilinearly (antialiased when shrinking); then
    C == 1 -> C' == 3 repeats the channel and C == 3 -> C' == 1 averages the channels.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float [B, C, H, W] batch in [0, 1], got {x.dtype} {tuple(x.shape)}")
    c_out, h_out, w_out = shape
    c, h, w = x.shape[1:]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std must have {c} values (one per image channel), "
                         f"got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if (c, c_out) not in ((c_out, c_out), (1, 3), (3, 1)):
        raise ValueError(f"cannot feed {c}-channel images to a model that takes {c_out} channels "
                         f"(supported: equal, 1 -> 3, 3 -> 1)")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = (x.float() - mean_t) / std_t
    if (h, w) != (h_out, w_out):
        x = F.interpolate(x, size=(h_out, w_out), mode="bilinear", align_corners=False,
                          antialias=h_out < h or w_out < w)
    if c == 1 and c_out == 3:
        x = x.expand(-1, 3, -1, -1)
    elif c == 3 and c_out == 1:
        x = x.mean(1, keepdim=True)
    return x.contiguous()


def augment(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Training augmentation of a batch [B, C, H, W] (any float dtype, any device), same shape out.

    ``kind``: "none" returns ``x``; "shift" moves every sample by its own integer offset in
    [-2, 2] along each spatial axis, zero fill; "crop-flip" is the CIFAR recipe: zero-pad 4, crop
    back to H x W at a random position per sample, and flip horizontally with probability 1/2 per
    sample. The random draws come from ``generator`` (a CPU generator): same state, same result.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}: expected one of {', '.join(AUGMENTATIONS)}")
    if x.dim() != 4:
        raise ValueError(f"x must be a [B, C, H, W] batch, got shape {tuple(x.shape)}")
    if kind == "none":
        return x
    if kind == "shift":  # a shift with zero fill is a crop of the input padded by the largest shift
        return _random_crop(x, 2, False, generator)
    return _random_crop(x, 4, True, generator)


def _random_crop(x: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per sample, the H x W window at a random offset in [0, 2 pad]^2 of ``x`` zero-padded by
    ``pad``, mirrored left-right with probability 1/2 when ``flip``."""
    b, c, h, w = x.shape
    top = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    rows = top + torch.arange(h)  # [B, H] rows of the padded image
    cols = left + torch.arange(w)  # [B, W]
    if flip:
        mirrored = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = rows.to(x.device).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = cols.to(x.device).view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)
