"""BranchyNet: B-LeNet trained on digits, then real early exit at several entropy thresholds.

scikit-learn's 8x8 digits are resized to B-LeNet's 28x28 grey input. The two exits are trained
jointly (BranchyNet's loss); each entropy threshold T then sends the samples whose softmax entropy
at the first exit is below T out there, and model.infer runs the second stage on the rest only.
Run: python examples/branchynet_entropy.py [EPOCHS]   (default 8)
"""
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from eexit import flops
from eexit.losses import joint_loss
from eexit.models import b_lenet

torch.manual_seed(0)
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
digits = load_digits()
images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
x = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
x = (x - x.mean()) / x.std()
y = torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, test = perm[:1400], perm[1400:]

model = b_lenet(num_classes=10)
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
for epoch in range(epochs):
    model.train()
    for idx in train[torch.randperm(len(train))].split(64):
        loss = joint_loss(model(x[idx]), y[idx])  # sum of both exits' cross-entropy
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.no_grad():
    per_exit = [(z.argmax(1) == y[test]).float().mean().item() for z in model(x[test])]
print(f"B-LeNet, {epochs} epochs on {len(train)} digits; test accuracy per exit "
      + " ".join(f"{a:.1%}" for a in per_exit))

# What a sample pays when it leaves at exit k (multiply-adds), and the network without early exit.
costs = flops.actual_exit_costs(model, (1, 28, 28))
stage, head = flops.stage_costs(model, (1, 28, 28))
full = sum(stage) + head[-1]
print(f"cost at exit 0: {costs[0] / full:.0%} of the full network, at exit 1: {costs[1] / full:.0%}")

print("entropy T  accuracy  exit fractions  cost of full")
for t in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0, 3.0):  # T = 0: nobody leaves early
    out = model.infer(x[test], thresholds=t, criterion="entropy")
    counts = torch.bincount(out.exit_index, minlength=2)
    acc = (out.pred == y[test]).float().mean().item()
    fractions = " ".join(f"{c / len(test):.2f}" for c in counts.tolist())
    print(f"{t:9g}  {acc:8.1%}  {fractions:>14}  {flops.expected_cost(counts, costs) / full:12.0%}")
