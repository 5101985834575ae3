"""`eexit demo`: the exit gate on the logits of a real classifier.

A softmax-regression classifier is fitted on scikit-learn's handwritten digits (shipped inside
the package: no download), and its test-set logits go through the exit gate at several
thresholds: how many samples would leave, how accurate those are, and what the gate costs
fused vs in the pure-PyTorch reference.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from eexit import ops, reference
from eexit.timing import median_ms

DEFAULT_THRESHOLDS = {"confidence": [0.5, 0.8, 0.9, 0.95, 0.99], "entropy": [1.0, 0.5, 0.3, 0.1, 0.02]}


def digits_logits(seed: int = 0, steps: int = 200):
    """Test-split logits float32 [N, 10] and labels int64 [N] of a linear classifier on the digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is in requirements-dev.txt
        raise RuntimeError("the demo needs scikit-learn (pip install scikit-learn)") from err
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    train, test = perm[:1200], perm[1200:]
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(model(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(x[test]), y[test]


def run(criterion: str = "confidence", thresholds: Optional[Sequence[float]] = None, batch: int = 4096,
        seed: int = 0, reps: int = 30) -> List[dict]:
    """Prints the demo's table and returns its rows."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    thresholds = list(DEFAULT_THRESHOLDS[criterion] if thresholds is None else thresholds)
    logits, labels = digits_logits(seed)
    big = logits.repeat((batch + len(logits) - 1) // len(logits), 1)[:batch].contiguous()
    print(f"eexit demo: linear classifier on scikit-learn digits, {len(labels)} test samples, "
          f"criterion={criterion}, extension={'yes' if ops.has_extension() else 'no (reference fallback)'}")
    print(f"accuracy with no early exit: {(logits.argmax(1) == labels).float().mean().item():.3f}")
    print(f"timings: median of {reps} gate calls on a batch of {batch} x {logits.shape[1]} logits\n")
    head = f"{'threshold':>9} {'exit %':>7} {'acc exited':>10} {'acc kept':>8} {'fused µs':>9} {'ref µs':>9} {'speedup':>7}"
    print(head)
    print("-" * len(head))
    rows = []
    with torch.inference_mode():
        for thr in thresholds:
            dec = ops.exit_gate(logits, thr, criterion)
            correct = dec.pred == labels
            acc = lambda idx: correct[idx].float().mean().item() if len(idx) else float("nan")  # noqa: E731
            fused = 1e3 * median_ms(lambda: ops.exit_gate(big, thr, criterion), reps, warmup=3)
            ref = 1e3 * median_ms(lambda: reference.exit_gate(big, thr, criterion), reps, warmup=3)
            row = dict(threshold=thr, exit_fraction=len(dec.exit_idx) / len(labels), acc_exited=acc(dec.exit_idx),
                       acc_kept=acc(dec.keep_idx), fused_us=fused, reference_us=ref)
            rows.append(row)
            print(f"{thr:>9.3g} {100 * row['exit_fraction']:>7.1f} {row['acc_exited']:>10.3f} {row['acc_kept']:>8.3f} "
                  f"{fused:>9.1f} {ref:>9.1f} {ref / fused:>6.1f}x")
    return rows
