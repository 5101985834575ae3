"""Exit heads: what turns a stage's feature into logits [B, num_classes]."""
from __future__ import annotations

import torch
from torch import nn

TOKEN_POOLS = ("cls", "mean")


def pool_linear_head(channels: int, num_classes: int) -> nn.Module:
    """Feature maps [B, channels, H, W]: global average pooling -> Linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class TokenHead(nn.Module):
    """Token sequences [B, L, dim] -> logits [B, num_classes]: the class token (``pool="cls"``,
    token 0, as ViT's classifier reads it) or the mean over the tokens (``"mean"``), LayerNorm, Linear."""

    def __init__(self, dim: int, num_classes: int, pool: str = "cls") -> None:
        super().__init__()
        if pool not in TOKEN_POOLS:
            raise ValueError(f"tokens must be one of {TOKEN_POOLS}, got {pool!r}")
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x[:, 0] if self.pool == "cls" else x.mean(1)))


def default_head(feature: torch.Tensor, num_classes: int, tokens: str = "cls") -> nn.Module:
    """The exit head for an example ``feature`` of its kind: [B, C, H, W] -> pool + Linear;
    [B, L, D] -> :class:`TokenHead` (``tokens``: "cls" or "mean"); [B, D] -> Linear."""
    if feature.dim() == 4:
        return pool_linear_head(feature.shape[1], num_classes)
    if feature.dim() == 3:
        return TokenHead(feature.shape[2], num_classes, tokens)
    if feature.dim() == 2:
        return nn.Linear(feature.shape[1], num_classes)
    raise ValueError(f"no default exit head for a feature of shape {tuple(feature.shape)} (expected "
                     "[B, C, H, W], [B, L, D] or [B, D]); pass head=")


class CutExit(nn.Module):
    """An exit at a graph cut: ``head`` applied to the cut module's output, the first element when
    the stage also carries other values across the cut (a tuple)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, h) -> torch.Tensor:
        return self.head(h[0] if isinstance(h, (tuple, list)) else h)
