"""Threshold calibration (eexit.calibrate): MSDNet's budgeted thresholds, geometric exit
fractions, the accuracy-vs-cost sweep and pick."""
import itertools
import math

import pytest
import torch

from eexit.calibrate import budgeted_thresholds, fractions_for_cost, geometric_exit_fractions, pick, threshold_sweep
from eexit.reference import exits

from helpers import DEVICES, generator, new_seed


def test_geometric_exit_fractions():
    assert geometric_exit_fractions(0.5, 3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert geometric_exit_fractions(1.0, 4) == pytest.approx([0.25] * 4)
    assert sum(geometric_exit_fractions(1.7, 5)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        geometric_exit_fractions(0.0, 3)
    with pytest.raises(ValueError):
        geometric_exit_fractions(0.5, 0)


def first_exit(scores, thr, criterion="confidence"):
    """Each sample's first exit whose score passes (the gate's rule), the last taking the rest."""
    out = []
    for i in range(scores.shape[1]):
        k = next((k for k in range(len(thr) - 1) if exits(scores[k, i], thr[k], criterion)), len(thr) - 1)
        out.append(k)
    return out


def test_budgeted_thresholds_hand_made():
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6],
                         [0.95, 0.5, 0.99, 0.4],
                         [0.3, 0.3, 0.3, 0.3]])
    # exit 0: quota 2 of the 4 free -> 0.9, 0.8 -> t = 0.8 takes samples 0, 1
    # exit 1: quota 1 of the free {2, 3} by exit-1 confidence (0.99, 0.4) -> t = 0.99 takes sample 2
    thr = budgeted_thresholds(conf, [0.5, 0.25, 0.25])
    assert thr[:2] == pytest.approx([0.8, 0.99]) and len(thr) == 3
    assert first_exit(conf, thr) == [0, 0, 1, 2]
    # a zero quota takes nobody; a quota equal to what is left takes all of it
    thr = budgeted_thresholds(conf, [0.0, 1.0, 0.0])
    assert thr[0] == math.inf and first_exit(conf, thr) == [1, 1, 1, 1]
    # ties let exit 0 take everyone, so exit 1's quota is larger than what is left: nobody
    ties = torch.tensor([[0.9] * 4, [0.5] * 4, [0.3] * 4])
    thr = budgeted_thresholds(ties, [0.25, 0.75, 0.0])
    assert thr[1] == math.inf and first_exit(ties, thr) == [0, 0, 0, 0]


def test_budgeted_thresholds_entropy_matches_confidence_order():
    ent = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.05, 0.9, 0.01, 0.8], [1.0, 1.0, 1.0, 1.0]])
    thr = budgeted_thresholds(ent, [0.5, 0.25, 0.25], "entropy")
    # exit 0 takes the two lowest entropies (0.1, 0.2): threshold one float32 ulp above 0.2;
    # exit 1 takes the lowest of the free {2, 3} by exit-1 entropy (0.01)
    assert thr[0] > ent[0, 1].item() and thr[0] == pytest.approx(0.2)
    assert first_exit(ent, thr, "entropy") == [0, 0, 1, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_budgeted_thresholds_hit_the_fractions_on_random_scores(device):
    seed = new_seed()
    gen = generator(seed)
    scores = torch.rand(4, 1000, generator=gen).sort(0).values  # later exits more confident
    fractions = geometric_exit_fractions(0.7, 4)
    thr = budgeted_thresholds(scores.to(device), fractions)  # scores on the GPU: the same thresholds
    assert thr == budgeted_thresholds(scores, fractions)
    taken = torch.zeros(1000, dtype=torch.bool)
    for k in range(3):
        now = (scores[k] >= thr[k]) & ~taken
        assert abs(now.sum().item() - 1000 * fractions[k]) <= 1, f"seed={seed} exit {k}"
        taken |= now


def test_budgeted_thresholds_bad_input():
    with pytest.raises(ValueError, match="one per exit"):
        budgeted_thresholds(torch.rand(3, 10), [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to at most 1"):
        budgeted_thresholds(torch.rand(2, 10), [0.8, 0.8])
    with pytest.raises(ValueError, match=r"\[n_exits, N\]"):
        budgeted_thresholds(torch.rand(10), [1.0])


def test_fractions_for_cost():
    costs = [1.0, 2.0, 4.0, 8.0]
    for target in (1.5, 3.0, 7.5):
        f = fractions_for_cost(costs, target)
        assert sum(a * c for a, c in zip(f, costs)) == pytest.approx(target, rel=1e-6)
        assert sum(f) == pytest.approx(1.0)
        ratios = [b / a for a, b in zip(f, f[1:])]
        assert max(ratios) == pytest.approx(min(ratios))  # geometric
    assert fractions_for_cost([5.0], 5.0) == [1.0]
    with pytest.raises(ValueError, match="outside"):
        fractions_for_cost(costs, 9.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        fractions_for_cost([2.0, 1.0], 1.5)


def brute_force_front(scores, correct, costs, grid, criterion):
    """Every combination evaluated one sample at a time, then the front: the sweep's definition."""
    points = []
    for combo in itertools.product(grid, repeat=scores.shape[0] - 1):
        acc = cost = 0.0
        for i in range(scores.shape[1]):
            k = next((k for k, t in enumerate(combo)
                      if (scores[k, i] >= t if criterion == "confidence" else scores[k, i] < t)), len(combo))
            acc += float(correct[k, i])
            cost += costs[k]
        points.append((cost / scores.shape[1], acc / scores.shape[1]))
    points.sort(key=lambda p: (p[0], -p[1]))
    front, best = [], -1.0
    for c, a in points:
        if a > best:
            front.append((c, a))
            best = a
    return front


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_sweep_equals_brute_force(criterion):
    seed = new_seed()
    gen = generator(seed)
    scores = torch.rand(3, 50, generator=gen) * (1 if criterion == "confidence" else 2)
    correct = torch.rand(3, 50, generator=gen) < torch.tensor([[0.6], [0.75], [0.9]])
    grid = [0.2, 0.5, 0.8, 0.95] + ([math.inf] if criterion == "confidence" else [0.0])
    front = threshold_sweep(scores, correct, [1.0, 2.5, 4.0], grid, criterion, chunk=7)
    want = brute_force_front(scores, correct, [1.0, 2.5, 4.0], grid, criterion)
    assert [(round(p.cost, 9), round(p.accuracy, 9)) for p in front] == \
        [(round(c, 9), round(a, 9)) for c, a in want], f"seed={seed}"
    for p in front:
        assert sum(p.exit_fractions) == pytest.approx(1.0) and len(p.thresholds) == 3


def test_sweep_hand_made_front_and_pick():
    scores = torch.tensor([[0.9, 0.8, 0.3, 0.2], [0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]])
    correct = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]).bool()
    front = threshold_sweep(scores, correct, [1.0, 2.0, 3.0], [0.0, 0.7, math.inf])
    assert [(p.cost, p.accuracy) for p in front] == [(1.0, 0.5), (1.5, 0.75), (2.0, 1.0)]
    assert front[1].thresholds[:2] == (0.7, 0.0) and front[1].exit_fractions == (0.5, 0.5, 0.0)
    assert pick(front, 0.0).cost == 2.0
    assert pick(front, 0.25).cost == 1.5
    assert pick(front, 0.3, baseline=0.8).cost == 1.0
    with pytest.raises(ValueError, match="within"):
        pick(front, 0.0, baseline=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        pick(front, -0.1)


def test_sweep_bad_input():
    s, c = torch.rand(3, 5), torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="costs"):
        threshold_sweep(s, c, [1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        threshold_sweep(s, c[:2], [1.0, 2.0, 3.0], [0.5])
    with pytest.raises(ValueError, match="grid"):
        threshold_sweep(s, c, [1.0, 2.0, 3.0], [[0.5]])


def test_sweep_runs_its_chunks_through_progress():
    scores, correct = torch.rand(3, 20), torch.ones(3, 20, dtype=torch.bool)
    seen = []

    def progress(chunks):
        seen.append(list(chunks))
        return seen[-1]

    front = threshold_sweep(scores, correct, [1.0, 2.0, 3.0], [0.2, 0.5, math.inf], chunk=4, progress=progress)
    assert seen == [[0, 4, 8]], "9 combinations in chunks of 4"
    assert front == threshold_sweep(scores, correct, [1.0, 2.0, 3.0], [0.2, 0.5, math.inf], chunk=4)
