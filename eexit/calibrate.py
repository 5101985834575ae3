"""Thresholds for early exit from scores cached on a validation set."""
from __future__ import annotations

import math
from typing import Callable, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from eexit._checks import check_criterion
from eexit.reference import exits


def never_exits(criterion: str) -> float:
    """The threshold no score passes: +inf for confidence, 0 for entropy."""
    return math.inf if criterion == "confidence" else 0.0


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


def fractions_for_cost(exit_costs: Sequence[float], target: float, iters: int = 100) -> List[float]:
    """Geometric exit fractions (:func:`geometric_exit_fractions`) whose expected cost
    ``sum(f_k * exit_costs[k])`` equals ``target``; exit_costs increasing (what a sample leaving at
    exit k pays). The cost grows with r from exit_costs[0] to exit_costs[-1]: bisection on log r."""
    k = len(exit_costs)
    if k < 1 or any(b < a for a, b in zip(exit_costs, exit_costs[1:])):
        raise ValueError(f"exit_costs must be non-empty and non-decreasing, got {list(exit_costs)}")
    if not exit_costs[0] <= target <= exit_costs[-1]:
        raise ValueError(f"target cost {target} is outside [{exit_costs[0]}, {exit_costs[-1]}], what the exits allow")

    def cost(log_r: float) -> float:
        return sum(f * c for f, c in zip(geometric_exit_fractions(math.exp(log_r), k), exit_costs))

    lo, hi = -50.0, 50.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) < target else (lo, mid)
    return geometric_exit_fractions(math.exp((lo + hi) / 2), k)


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
    taken = torch.zeros(n, dtype=torch.bool, device=scores.device)
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


class ParetoPoint(NamedTuple):
    """One threshold setting: its thresholds (one per exit; the last is unused), accuracy,
    mean cost per sample and the fraction of samples leaving at each exit."""

    thresholds: Tuple[float, ...]
    accuracy: float
    cost: float
    exit_fractions: Tuple[float, ...]


def threshold_sweep(scores: torch.Tensor, correct: torch.Tensor, costs: Sequence[float],
                    grid: Union[Sequence[float], Sequence[Sequence[float]]], criterion: str = "confidence",
                    chunk: int = 4096, progress: Callable[[Iterable], Iterable] = lambda it: it) -> List[ParetoPoint]:
    """Every combination of per-exit thresholds from ``grid``, evaluated on cached validation
    results (vectorised; the model is not rerun), reduced to the accuracy-vs-cost Pareto front.

    scores: [K, N] per-exit scores (max probability, or entropy), correct: bool [K, N] whether
    exit k's prediction is right, costs: [K] cost a sample pays when it leaves at exit k.
    grid: threshold values tried at each of the first K-1 exits (one list for all, or one per
    exit; +inf for confidence / 0 for entropy means nobody leaves there).
    progress: wraps the loop over chunks of combinations (e.g. a progress bar).
    Returns the front sorted by cost: each point more accurate than every cheaper one.
    """
    check_criterion(criterion)
    if scores.dim() != 2 or correct.shape != scores.shape:
        raise ValueError(f"scores and correct must both be [K, N], got {tuple(scores.shape)} and "
                         f"{tuple(correct.shape)}")
    k_exits, n = scores.shape
    if len(costs) != k_exits:
        raise ValueError(f"costs: expected one per exit ({k_exits}), got {len(costs)}")
    per_exit = [list(g) for g in grid] if grid and isinstance(grid[0], (list, tuple)) else [list(grid)] * (k_exits - 1)
    if len(per_exit) != k_exits - 1 or any(not g for g in per_exit):
        raise ValueError(f"grid: expected non-empty values for each of the first {k_exits - 1} exits")
    # passes[k][g, i]: sample i passes value g of exit k's grid (the gate's rule, in float32)
    passes = [torch.stack([exits(scores[k].float(), v, criterion) for v in values])
              for k, values in enumerate(per_exit)]
    cost = torch.as_tensor(costs, dtype=torch.float64)
    correct = correct.bool()
    combos = torch.cartesian_prod(*[torch.arange(len(g)) for g in per_exit]).reshape(-1, k_exits - 1)
    points = []
    for start in progress(range(0, combos.shape[0], chunk)):
        idx = combos[start: start + chunk]
        exit_of = torch.full((idx.shape[0], n), k_exits - 1, dtype=torch.long)
        left = torch.ones(idx.shape[0], n, dtype=torch.bool)
        for k in range(k_exits - 1):
            here = passes[k][idx[:, k]] & left
            exit_of[here] = k
            left &= ~here
        acc = correct.t().gather(1, exit_of.t()).t()  # [M, N]: whether sample i is right where it leaves
        counts = torch.stack([(exit_of == k).sum(1) for k in range(k_exits)], 1).double()  # whole numbers
        # sums of whole counts before the one division: ties between combinations stay exact
        for row, accuracy, c, frac in zip(idx.tolist(), (acc.sum(1).double() / n).tolist(),
                                          ((counts @ cost) / n).tolist(), (counts / n).tolist()):
            thr = tuple(per_exit[k][g] for k, g in enumerate(row)) + (never_exits(criterion),)
            points.append(ParetoPoint(thr, accuracy, c, tuple(frac)))
    points.sort(key=lambda p: (p.cost, -p.accuracy))
    front, best = [], -1.0
    for p in points:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def pick(front: Sequence[ParetoPoint], max_accuracy_drop: float, baseline: Optional[float] = None) -> ParetoPoint:
    """The cheapest point of ``front`` whose accuracy is at least ``baseline - max_accuracy_drop``
    (baseline: the front's best accuracy unless given, e.g. the full network's)."""
    if not front:
        raise ValueError("front is empty")
    if max_accuracy_drop < 0:
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}")
    base = max(p.accuracy for p in front) if baseline is None else baseline
    ok = [p for p in front if p.accuracy >= base - max_accuracy_drop - 1e-12]
    if not ok:
        raise ValueError(f"no point of the front is within {max_accuracy_drop} of accuracy {base}")
    return min(ok, key=lambda p: p.cost)
