"""The fused exit gate on the logits of a real classifier.

Trains a linear head on scikit-learn's handwritten digits (8x8 scans that ship with scikit-learn),
then gates its test logits by confidence and by entropy: which samples leave, how accurate they are,
the compaction of the rest, and that the fused ops give what eexit.reference defines.
Run: python examples/gate_on_a_real_head.py
"""
import torch
from sklearn.datasets import load_digits

import eexit
from eexit import reference

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # [1797, 64] pixels in [0, 1]
y = torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, test = perm[:1200], perm[1200:]

head = torch.nn.Linear(64, 10)
opt = torch.optim.Adam(head.parameters(), lr=0.05)
for step in range(200):
    loss = torch.nn.functional.cross_entropy(head(x[train]), y[train])
    opt.zero_grad()
    loss.backward()
    opt.step()

with torch.no_grad():  # the fused ops are for inference
    feats, labels = x[test], y[test]
    logits = head(feats)  # [N, 10]
print(f"linear head on digits: test accuracy {(logits.argmax(1) == labels).float().mean():.1%} "
      f"({len(test)} samples); extension in use: {eexit.has_extension()}")


def accuracy(pred, rows):
    return (pred[rows] == labels[rows]).float().mean().item() if rows.numel() else float("nan")


print("scores of the first 5 rows: confidence",
      [round(v, 3) for v in eexit.exit_gate(logits[:5], 0.9).score.tolist()],
      "entropy (nats)", [round(v, 3) for v in eexit.exit_gate(logits[:5], 0.3, "entropy").score.tolist()])
differ, worst = 0, 0.0  # against eexit.reference: rows split differently, largest score difference
for criterion, rule, thresholds in (("confidence", ">=", (0.5, 0.9, 0.99)), ("entropy", "<", (0.05, 0.3, 1.0))):
    for t in thresholds:
        dec = eexit.exit_gate(logits, t, criterion)
        leave, stay = dec.exit_idx, dec.keep_idx
        print(f"{criterion} {rule} {t}: {leave.numel():3d} exit (accuracy {accuracy(dec.pred, leave):.1%}), "
              f"{stay.numel():3d} stay (accuracy {accuracy(dec.pred, stay):.1%}); first leaving: {leave[:6].tolist()}")
        ref = reference.exit_gate(logits, t, criterion)
        assert torch.equal(dec.pred, ref.pred)
        differ += len(set(leave.tolist()) ^ set(ref.exit_idx.tolist()))  # only rows within rounding of t
        worst = max(worst, (dec.score - ref.score).abs().max().item())
print(f"against eexit.reference: same predictions, {differ} rows split differently, "
      f"scores within {worst:.1e} (float32 rounding)")

# The samples that stay go on to the next stage: compact their features (and labels) in one call.
kept_feats, kept_labels = eexit.compact([feats, labels], dec.keep_idx)
assert torch.equal(kept_feats, reference.compact([feats], dec.keep_idx)[0])
print(f"compact: features {tuple(feats.shape)} -> {tuple(kept_feats.shape)}, labels {tuple(kept_labels.shape)}, "
      "the same rows as eexit.reference.compact")
