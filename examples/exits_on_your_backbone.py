"""Early exits on your own network: attach_exits cuts a plain CNN after named modules.

The CNN below knows nothing about early exit. attach_exits traces it with torch.fx, cuts it after
two of its modules (dotted names) and puts a pooling + linear head at each cut; the network and
its exits are trained jointly on scikit-learn's digits, thresholds are calibrated on a validation
split, and net.infer runs real early exit on the test split.
Run: python examples/exits_on_your_backbone.py [EPOCHS]   (default 15)
"""
import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

from eexit import calibrate, flops, reference
from eexit.losses import joint_loss
from eexit.nn import attach_exits


def conv_bn_relu(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(1, 16), conv_bn_relu(16, 32, 2), conv_bn_relu(32, 32),
                                      conv_bn_relu(32, 64, 2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))  # forward's own code runs in the stages too


torch.manual_seed(0)
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
x, y = (x - x.mean()) / x.std(), torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, val, test = perm[:1100], perm[1100:1450], perm[1450:]

net = attach_exits(SmallCNN(), after=["features.1", "features.2"], num_classes=10, example_input=x[:1])
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
for epoch in range(epochs):
    net.train()
    for idx in train[torch.randperm(len(train))].split(64):
        loss = joint_loss(net(x[idx]), y[idx])  # every exit's cross-entropy, summed
        opt.zero_grad()
        loss.backward()
        opt.step()
net.eval()

with torch.no_grad():
    val_logits, test_logits = net(x[val]), net(x[test])  # every exit, every sample
print("test accuracy per exit", " ".join(f"{(z.argmax(1) == y[test]).float().mean():.1%}" for z in test_logits))

# Calibrate: every combination of confidence thresholds on the validation split, then the cheapest
# point within 0.5 accuracy points of the last exit's.
costs = flops.actual_exit_costs(net, (1, 8, 8))  # what a sample leaving at exit k pays
stage, head = flops.stage_costs(net, (1, 8, 8))
full = sum(stage) + head[-1]  # every stage, the last exit only: no early exit
scores = torch.stack([reference.gate_scores(z, "confidence") for z in val_logits])
correct = torch.stack([z.argmax(1) == y[val] for z in val_logits])
grid = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, float("inf")]
front = calibrate.threshold_sweep(scores, correct, costs, grid)
point = calibrate.pick(front, max_accuracy_drop=0.005, baseline=correct[-1].float().mean().item())
print("thresholds", point.thresholds[:-1], f"(validation accuracy {point.accuracy:.1%}, "
      f"last exit {correct[-1].float().mean():.1%})")

out = net.infer(x[test], point.thresholds)
counts = torch.bincount(out.exit_index, minlength=len(costs))
print(f"early exit: test accuracy {(out.pred == y[test]).float().mean():.1%}, exit fractions "
      + " ".join(f"{c / len(test):.2f}" for c in counts.tolist())
      + f", mean cost {flops.expected_cost(counts, costs) / full:.0%} of the full network")
