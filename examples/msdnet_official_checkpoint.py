"""MSDNet from an official checkpoint, calibrated for a compute budget, with real early exit.

python examples/msdnet_official_checkpoint.py [CHECKPOINT [PRESET]]
CHECKPOINT: a file saved by github.com/kalviny/MSDNet-PyTorch (``model_best.pth.tar``), PRESET its
architecture: cifar_anytime (default), cifar_budgeted, imagenet_step4|6|7 (CIFAR presets load 100
classes, ImageNet 1000). Without a checkpoint the script writes a stand-in in the official layout
from a freshly built model (random weights).
The images are scikit-learn's digits, resized: accuracy against their labels means nothing for a
CIFAR or ImageNet model, so what is printed is the agreement with the full network's predictions.
"""
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from eexit import calibrate, flops, reference
from eexit.models import PRESETS, MSDNet
from eexit.runner import run_full_network
from eexit.timing import interleaved_medians

torch.manual_seed(0)
preset = sys.argv[2] if len(sys.argv) > 2 else "cifar_anytime"
if len(sys.argv) > 1:
    path = sys.argv[1]
else:  # the official layout: {'state_dict': {'module.<key>': tensor}, 'epoch': ..., 'best_prec1': ...}
    tmp = tempfile.TemporaryDirectory()  # deleted when the script ends
    path = os.path.join(tmp.name, "model_best.pth.tar")
    state = {"module." + k: v for k, v in PRESETS[preset]().state_dict().items()}
    torch.save({"epoch": 300, "arch": "msdnet", "state_dict": state, "best_prec1": 0.0}, path)
    print(f"no checkpoint given: wrote a stand-in with random weights to {path}; agreement will be near chance")
model = MSDNet.load_official(path, preset=preset)
print(f"loaded MSDNet {preset}: {model.n_blocks} exits, {model.num_classes} classes")

# 3-channel images at the model's size: 128 to calibrate on, 128 to test on.
size = model.input_shape[1]
digits = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
x = F.interpolate(digits, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
x = ((x - x.mean()) / x.std())[torch.randperm(len(x))]
val, test = x[:128].contiguous(), x[128:256].contiguous()

# Calibrate: geometric exit fractions whose mean cost is half the full network's, then per-exit
# confidence thresholds that send those fractions out on the validation batch (MSDNet's budgeted rule).
costs = flops.actual_exit_costs(model, size)  # multiply-adds a sample leaving at exit k pays
stage, head = flops.stage_costs(model, size)
full = sum(stage) + head[-1]  # every block, the last classifier only: no early exit
fractions = calibrate.fractions_for_cost(costs, 0.5 * full)
with torch.no_grad():
    scores = torch.stack([reference.gate_scores(z, "confidence") for z in model(val)])  # [exits, N]
thresholds = calibrate.budgeted_thresholds(scores, fractions)
print("target exit fractions", " ".join(f"{f:.2f}" for f in fractions))
print("thresholds           ", " ".join(f"{t:.4f}" for t in thresholds))

out = model.infer(test, thresholds)  # real early exit
with torch.inference_mode():
    full_pred = run_full_network(*model.exit_stages(), test).argmax(1)
counts = torch.bincount(out.exit_index, minlength=model.n_blocks)
print("test exit fractions  ", " ".join(f"{c / len(test):.2f}" for c in counts.tolist()))
print(f"agreement with the full network: {(out.pred == full_pred).float().mean():.1%}; "
      f"mean cost {flops.expected_cost(counts, costs) / full:.0%} of the full network")

with torch.inference_mode():
    ms = interleaved_medians({"infer": lambda: model.infer(test, thresholds),
                              "full": lambda: run_full_network(*model.exit_stages(), test)}, reps=5)
print(f"batch of {len(test)}: full network {ms['full']:.0f} ms, early exit {ms['infer']:.0f} ms, "
      f"speedup {ms['full'] / ms['infer']:.2f}x")
