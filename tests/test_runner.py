"""The generic early-exit runner against the dense simulation."""
import math

import pytest
import torch
from torch import nn

from eexit import ops, reference
from eexit.runner import run_all_exits, run_early_exit, run_full_network, simulate_early_exit

from helpers import new_seed
from infer_checks import thresholds_between_scores, toy

CRITERIA = ["confidence", "entropy"]


@pytest.mark.parametrize("kind", ["mlp", "multiscale"])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("gate", [ops, reference], ids=["fused", "reference"])
def test_matches_dense_simulation(kind, criterion, gate):
    seed = new_seed()
    stages, exits, x = toy(kind, seed)
    with torch.inference_mode():
        all_logits = run_all_exits(stages, exits, x)
        thr = thresholds_between_scores(all_logits, criterion)
        got = run_early_exit(stages, exits, x, thr, criterion, gate=gate)
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
        thr = thresholds_between_scores(run_all_exits(stages, exits, x), "confidence")
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
        thr = thresholds_between_scores(run_all_exits(stages, exits, x), "confidence")
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


@pytest.mark.parametrize("kind", ["mlp", "multiscale"])
def test_all_exits_and_full_network_loops(kind):
    """run_all_exits gives every exit's logits for every sample; run_full_network is its last one."""
    seed = new_seed()
    stages, exits, x = toy(kind, seed)
    with torch.no_grad():
        every = run_all_exits(stages, exits, x)
        assert len(every) == len(exits) and all(t.shape[0] == x.shape[0] for t in every)
        for k in range(len(exits)):  # exit k on stages 0..k, recomputed from the input
            h = x
            for stage in stages[: k + 1]:
                h = stage(h)
            torch.testing.assert_close(every[k], exits[k](h))
        torch.testing.assert_close(run_full_network(stages, exits, x), every[-1])
