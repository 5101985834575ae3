"""Thresholds for early exit from scores cached on a validation set."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

from eexit._checks import check_criterion
from eexit.runner import never_exits


def _float32_above(v: float) -> float:
    return torch.nextafter(torch.tensor(v, dtype=torch.float32), torch.tensor(math.inf)).item()


def geometric_exit_fractions(r: float, n_exits: int) -> List[float]:
    """Fractions of samples leaving at each exit, proportional to r**k (k = 0 .. n_exits-1):
    MSDNet's budgeted-batch schedule (r < 1 front-loads, r > 1 back-loads). They sum to 1."""
    if not (isinstance(n_exits, int) and n_exits >= 1):
        raise ValueError(f"n_exits must be an int >= 1, got {n_exits!r}")
    if not r > 0:
        raise ValueError(f"r must be > 0, got {r!r}")
    w = [r ** k for k in range(n_exits)]
    total = sum(w)
    return [v / total for v in w]


def budgeted_thresholds(scores: torch.Tensor, fractions: Sequence[float],
                        criterion: str = "confidence") -> List[float]:
    """Per-exit thresholds so that about fractions[k] of the samples leave at exit k.

    scores: [n_exits, N] per-exit scores of N validation samples (max probability, or entropy).
    Exit by exit, among the samples no earlier exit has taken, in order of confidence (highest
    probability, or lowest entropy), the threshold is the score of the floor(N * fractions[k])-th
    one; every sample passing it is then taken. An exit whose quota is 0, or larger than what is
    left, takes nobody (threshold +inf for confidence, 0 for entropy). The last threshold is
    forced so that it takes everyone left. This is the MSDNet paper code's procedure.
    """
    check_criterion(criterion)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError("scores must be a tensor [n_exits, N]")
    n_exits, n = scores.shape
    if len(fractions) != n_exits:
        raise ValueError(f"fractions: expected one per exit ({n_exits}), got {len(fractions)}")
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to at most 1, got {list(fractions)}")
    conf = scores.double() if criterion == "confidence" else -scores.double()  # higher = more confident
    taken = torch.zeros(n, dtype=torch.bool)
    thresholds = []
    for k in range(n_exits - 1):
        quota = math.floor(n * fractions[k])
        free = conf[k][~taken]
        if quota == 0 or quota > free.numel():
            thresholds.append(never_exits(criterion))
            continue
        t = free.sort(descending=True).values[quota - 1].item()
        taken |= conf[k] >= t
        # back to the gate's rule, in its float32: probability >= t, or entropy < one ulp above -t
        thresholds.append(t if criterion == "confidence" else _float32_above(-t))
    thresholds.append(0.0 if criterion == "confidence" else math.inf)
    return thresholds
