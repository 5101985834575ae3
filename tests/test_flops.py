"""FLOPs accounting (eexit.flops): the official MSDNet counter's convention and real early exit's costs."""
import pytest
import torch
from torch import nn

from eexit.flops import actual_exit_costs, exit_costs, expected_cost, stage_costs
from eexit.models import msdnet_cifar_anytime, msdnet_imagenet
from eexit.nn import ComputePathModule


def test_flops_imagenet_step7_matches_published():
    """Official op_counter figures of the released step-7 model (MFLOPs, 224 px)."""
    torch.manual_seed(0)
    model = msdnet_imagenet(7)
    published = [615.69, 1436.39, 2283.21, 2967.42, 3253.79]
    got = [c / 1e6 for c in exit_costs(model, 224)]
    for k, (g, p) in enumerate(zip(got, published)):
        assert abs(g - p) <= 0.005 * p, f"exit {k}: {g:.2f} vs published {p} MFLOPs ({got})"
    assert actual_exit_costs(model, 224) == pytest.approx(exit_costs(model, 224), rel=1e-12)


def test_flops_conventions_and_state():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))

        def exit_stages(self):
            return [self.stage], [self.head]

        def forward(self, x):
            return [self.head(self.stage(x))]

    toy = Toy()
    # conv 3*4*9*8*8 (no bias), BN 0, ReLU 4*8*8, avg-pool 4*4*4 outputs * 4, linear 640 + 10
    assert exit_costs(toy, 8) == [6912 + 256 + 256 + 650]
    assert stage_costs(toy, (3, 8, 8)) == ([6912 + 256], [256 + 650])

    model = msdnet_cifar_anytime().train().set_backend("fused")
    costs = exit_costs(model, 32)
    assert model.training and all(m.compute_path == "fast" for m in model.modules() if isinstance(m, ComputePathModule))
    assert actual_exit_costs(model, (32, 32)) == pytest.approx(costs, rel=1e-12)
    assert costs == sorted(costs) and 14e6 < costs[0] < costs[-1] < 80e6

    class Odd(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="no counting rule"):
        exit_costs(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU(), Odd()), 4)


def test_expected_cost():
    assert expected_cost([3, 1], [10.0, 30.0]) == pytest.approx(15.0)
    assert expected_cost(torch.tensor([0.0, 0.5, 0.5]), [1.0, 2.0, 4.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="exit counts"):
        expected_cost([1, 2], [1.0])
    with pytest.raises(ValueError, match="positive sum"):
        expected_cost([0, 0], [1.0, 2.0])
