"""A torchvision-style ResNet-18 cut with attach_exits after layer1..layer3 (pool -> linear heads),
CIFAR-size input (32 px), random weights, confidence thresholds calibrated to geometric exit
fractions (r = 0.5): eexit's real early exit raced against the full network eager and under
torch.compile (early_exit_common.race_stock). Target on CPU: infer speedup over the best
full-network contender >= 0.8 x the cost ratio. Summarise with benchmarks/report_early_exit.py."""
import pytest
import torch

from eexit.calibrate import geometric_exit_fractions
from eexit.nn import attach_exits

from early_exit_common import calibrate, costs, record_race
from resnet18 import ResNet18

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_cache = {}


def setup(device):
    if device not in _cache:
        torch.manual_seed(0)
        net = attach_exits(ResNet18(10), ["layer1", "layer2", "layer3"], 10, torch.zeros(1, 3, 32, 32)).eval()
        net = net.to(device)
        fractions = geometric_exit_fractions(0.5, 4)
        thresholds = calibrate(net, torch.randn(512, 3, 32, 32, device=device), fractions, "confidence")
        _cache[device] = (net, thresholds, costs(net, (3, 32, 32)), fractions)
    return _cache[device]


@pytest.mark.parametrize("batch", [64, 256, 1024])
@pytest.mark.parametrize("device", DEVICES)
def test_resnet18_exits_race_stock(benchmark, device, batch):
    net, thresholds, cost, fractions = setup(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    record_race(benchmark, net, thresholds, "confidence", x, cost, 9, f"attach_exits {device} resnet18",
                "resnet18-attach_exits")
