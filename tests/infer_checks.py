"""Shared infer-vs-simulation checks: toy stage/exit networks, thresholds that split the batch,
and the check that ``model.infer`` equals the dense simulation of ``model(x)``."""
import math

import torch
from torch import nn

from eexit.reference import exits, gate_scores
from eexit.runner import simulate_early_exit

from helpers import generator


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


def thresholds_between_scores(all_logits, criterion):
    """Exit by exit, the midpoint of the widest gap near the middle of the scores of the samples
    still left: about half of them leave at every exit, and no remaining sample's score lies
    near a threshold (so fused and reference scores agree on every decision)."""
    left = torch.ones(all_logits[0].shape[0], dtype=torch.bool, device=all_logits[0].device)
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
