"""The generic early-exit runner against the dense simulation, and threshold calibration."""
import math

import pytest
import torch
from torch import nn

from eexit.calibrate import budgeted_thresholds, fractions_for_cost, geometric_exit_fractions
from eexit.runner import run_early_exit, simulate_early_exit
from helpers import generator, new_seed

CRITERIA = ["confidence", "entropy"]


class Split(nn.Module):
    """A multi-scale stage: a tensor (or the previous list) -> [feature map (channels_last), vector]."""

    def __init__(self, c_in, c):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c, 3, padding=1)
        self.vec = nn.Linear(c, 6)

    def forward(self, x):
        x = x if isinstance(x, torch.Tensor) else x[0]
        f = torch.relu(self.conv(x)).contiguous(memory_format=torch.channels_last)
        return [f, self.vec(f.mean((2, 3)))]


class Head(nn.Module):
    def __init__(self, c, classes):
        super().__init__()
        self.fc = nn.Linear(c + 6, classes)

    def forward(self, feats):
        f, v = feats
        return self.fc(torch.cat([f.mean((2, 3)), v], 1))


def toy(kind: str, seed: int):
    torch.manual_seed(seed)
    if kind == "mlp":
        stages = [nn.Sequential(nn.Linear(12, 16), nn.ReLU()), nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
                  nn.Sequential(nn.Linear(16, 16), nn.Tanh())]
        exits = [nn.Linear(16, 7) for _ in stages]
        x = torch.randn(41, 12, generator=generator(seed)) * 2
    else:
        stages = [Split(3, 8), Split(8, 8), Split(8, 8)]
        exits = [Head(8, 5) for _ in stages]
        x = torch.randn(23, 3, 6, 6, generator=generator(seed))
    for m in exits:  # spread the confidences
        with torch.no_grad():
            m.weight.mul_(3.0) if isinstance(m, nn.Linear) else m.fc.weight.mul_(3.0)
    return nn.ModuleList(stages).eval(), nn.ModuleList(exits).eval(), x


def dense_logits(stages, exits, x):
    out, h = [], x
    for s, e in zip(stages, exits):
        h = s(h)
        out.append(e(h))
    return out


def thresholds_between_scores(all_logits, criterion):
    """Exit by exit, the midpoint of the widest gap near the middle of the scores of the samples
    still left: about half of them leave at every exit, and no remaining sample's score lies
    near a threshold (so fused and reference scores agree on every decision)."""
    from eexit.reference import exits, gate_scores

    left = torch.ones(all_logits[0].shape[0], dtype=torch.bool)
    thr = []
    for z in all_logits[:-1]:
        score = gate_scores(z, criterion)
        s = score[left].sort().values
        if len(s) < 2:  # too few left to split: nobody leaves here
            thr.append(math.inf if criterion == "confidence" else 0.0)
            continue
        i = len(s) // 2
        lo = max(i - 3, 0)
        j = lo + int((s[1:] - s[:-1])[lo: i + 3].argmax())
        thr.append(((s[j] + s[j + 1]) / 2).item())
        left &= ~exits(score, thr[-1], criterion)
    return thr + [0.5]


def check_infer_matches_simulation(model, x, criterion, seed, tol=1e-5):
    """model.infer equals the dense simulation of model(x) at thresholds between the scores;
    returns (infer's output, thresholds)."""
    with torch.inference_mode():
        all_logits = model(x)
        thr = thresholds_between_scores(all_logits, criterion)
        got = model.infer(x, thr, criterion)
    want = simulate_early_exit(all_logits, thr, criterion)
    assert torch.equal(got.exit_index, want.exit_index), f"seed={seed}"
    assert torch.equal(got.pred, want.pred), f"seed={seed}"
    # float32 error accumulates relative to the activations' magnitude: bound it by the largest logit
    scale = max(want.logits.abs().max().item(), 1.0)
    torch.testing.assert_close(got.logits, want.logits, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(got.score, want.score, atol=max(tol, 2e-5), rtol=max(tol, 2e-5))
    return got, thr


@pytest.mark.parametrize("kind", ["mlp", "multiscale"])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("use_reference", [False, True], ids=["fused", "reference"])
def test_matches_dense_simulation(kind, criterion, use_reference):
    seed = new_seed()
    stages, exits, x = toy(kind, seed)
    with torch.inference_mode():
        all_logits = dense_logits(stages, exits, x)
        thr = thresholds_between_scores(all_logits, criterion)
        got = run_early_exit(stages, exits, x, thr, criterion, use_reference=use_reference)
        want = simulate_early_exit(all_logits, thr, criterion)
    assert torch.equal(got.exit_index, want.exit_index), f"seed={seed}"
    assert set(got.exit_index.tolist()) == {0, 1, 2}, f"seed={seed}: every exit should take someone"
    assert torch.equal(got.pred, want.pred), f"seed={seed}"
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.score, want.score, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kind", ["mlp", "multiscale"])
def test_batch_invariance(kind):
    seed = new_seed()
    stages, exits, x = toy(kind, seed)
    with torch.inference_mode():
        thr = thresholds_between_scores(dense_logits(stages, exits, x), "confidence")
        whole = run_early_exit(stages, exits, x, thr)
        for i in range(x.shape[0]):
            one = run_early_exit(stages, exits, x[i: i + 1], thr)
            assert one.exit_index.item() == whole.exit_index[i].item(), f"seed={seed} row={i}"
            assert one.pred.item() == whole.pred[i].item()
            torch.testing.assert_close(one.logits[0], whole.logits[i], atol=1e-5, rtol=1e-5)


def test_later_stages_never_run_once_everyone_left():
    stages, exits, x = toy("mlp", new_seed())
    calls = []
    for k, s in enumerate(stages):
        s.register_forward_hook(lambda m, i, o, k=k: calls.append((k, i[0].shape[0])))
    with torch.inference_mode():
        out = run_early_exit(stages, exits, x, [0.0, 0.5, 0.5])  # confidence >= 0: all leave at exit 0
    assert calls == [(0, x.shape[0])] and out.exit_index.eq(0).all()
    calls.clear()
    with torch.inference_mode():
        out = run_early_exit(stages, exits, x, [math.inf, 0.0, 0.0])  # nobody at exit 0, all at exit 1
    assert calls == [(0, x.shape[0]), (1, x.shape[0])] and out.exit_index.eq(1).all()


def test_stages_see_only_active_rows():
    stages, exits, x = toy("multiscale", new_seed())
    sizes = []
    with torch.inference_mode():
        thr = thresholds_between_scores(dense_logits(stages, exits, x), "confidence")
        stages[2].register_forward_hook(lambda m, i, o: sizes.append(i[0][0].shape[0]))
        out = run_early_exit(stages, exits, x, thr)
    assert sizes == [int(out.exit_index.eq(2).sum())]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_empty_and_single_batch(criterion):
    stages, exits, x = toy("mlp", new_seed())
    with torch.inference_mode():
        empty = run_early_exit(stages, exits, x[:0], 0.5 if criterion == "confidence" else 1.0, criterion)
        assert empty.logits.shape == (0, 7) and empty.exit_index.shape == (0,)
        one = run_early_exit(stages, exits, x[:1], 0.5 if criterion == "confidence" else 1.0, criterion)
        assert one.logits.shape == (1, 7) and 0 <= one.exit_index.item() <= 2


def test_nan_rows_leave_at_the_last_exit():
    stages, exits, x = toy("mlp", new_seed())
    x = x.clone()
    x[3] = math.nan
    with torch.inference_mode():
        out = run_early_exit(stages, exits, x, 0.0)  # everyone else leaves at exit 0
    assert out.exit_index[3].item() == 2 and math.isnan(out.score[3].item())
    assert out.exit_index[torch.arange(len(x)) != 3].eq(0).all()


def test_bad_input():
    stages, exits, x = toy("mlp", new_seed())
    with pytest.raises(ValueError, match="one per exit"):
        run_early_exit(stages, exits, x, [0.5, 0.5])
    with pytest.raises(ValueError, match="as many"):
        run_early_exit(stages, exits[:2], x, 0.5)
    with pytest.raises(ValueError, match=r"thresholds\[1\]"):
        run_early_exit(stages, exits, x, [0.5, 1.5, 0.5])
    with pytest.raises(ValueError, match=r"criterion"):
        run_early_exit(stages, exits, x, 0.5, "margin")
    bad = nn.ModuleList([exits[0], nn.Sequential(exits[1], nn.Unflatten(1, (7, 1))), exits[2]])
    with pytest.raises(ValueError, match=r"exits\[1\] must return logits"):
        with torch.inference_mode():
            run_early_exit(stages, bad, x, [math.inf, 0.5, 0.5])
    wrong_classes = nn.ModuleList([exits[0], nn.Linear(16, 4), exits[2]])
    with pytest.raises(ValueError, match="classes"):
        with torch.inference_mode():
            run_early_exit(stages, wrong_classes, x, [math.inf, 0.5, 0.5])


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
    from eexit.reference import exits

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


def test_budgeted_thresholds_hit_the_fractions_on_random_scores():
    seed = new_seed()
    gen = generator(seed)
    scores = torch.rand(4, 1000, generator=gen).sort(0).values  # later exits more confident
    fractions = geometric_exit_fractions(0.7, 4)
    thr = budgeted_thresholds(scores, fractions)
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
