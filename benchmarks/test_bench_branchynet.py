"""BranchyNet: real early exit vs the full backbone vs the all-exits simulation, CPU (and CUDA).

Random weights; entropy thresholds calibrated on random images so that the exits take the
paper's percentages (B-LeNet 94.3/5.7, B-AlexNet 65.6/25.2/9.2, B-ResNet-110 41.5/13.8/44.7).
Batch 1 (the paper's setting: 32 samples one at a time) and 256. Summarise with
benchmarks/report_early_exit.py; the paper's CPU speedups at batch 1 are 5.4x, 1.5x and 1.9x.
"""
import pytest
import torch

from eexit.models import b_alexnet, b_lenet, b_resnet110

from early_exit_common import calibrate, contenders, costs, exit_fractions, one_at_a_time, record_race

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODELS = {
    "b-lenet": (b_lenet, (1, 28, 28), [0.943, 0.057], 5.4),
    "b-alexnet": (b_alexnet, (3, 32, 32), [0.656, 0.252, 0.092], 1.5),
    "b-resnet110": (b_resnet110, (3, 32, 32), [0.415, 0.138, 0.447], 1.9),
}
_cache = {}


def setup(name, device):
    if (name, device) not in _cache:
        build, size, fractions, paper = MODELS[name]
        torch.manual_seed(0)
        net = build().eval().to(device)
        thresholds = calibrate(net, torch.randn(512, *size, device=device), fractions, "entropy")
        _cache[name, device] = (net, thresholds, costs(net, size), fractions, paper)
    return _cache[name, device]


@pytest.mark.parametrize("impl", ["infer", "full", "simulate"])
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_branchynet(benchmark, device, name, batch, impl):
    net, thresholds, cost, fractions, paper = setup(name, device)
    x = torch.randn(32 if batch == 1 else batch, *MODELS[name][1], device=device)
    fn = contenders(net, thresholds, "entropy")[impl]
    fn = one_at_a_time(fn) if batch == 1 else fn
    with torch.inference_mode():
        if impl == "infer":
            out = contenders(net, thresholds, "entropy")["infer"](x)
            benchmark.extra_info["exit_fractions"] = exit_fractions(out, len(fractions))
        benchmark.group = f"branchynet {device} {name} batch={batch}"
        benchmark.extra_info.update(device=device, model=name, batch=batch, impl=impl, target_fractions=fractions,
                                    paper_speedup=paper, **cost)
        rounds = 7 if name == "b-resnet110" else 15
        benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("device", DEVICES)
def test_branchynet_race_stock(benchmark, device, name):
    """eexit vs the reference model eager and under torch.compile (channels_last), batch 256, interleaved."""
    net, thresholds, cost, fractions, paper = setup(name, device)
    x = torch.randn(256, *MODELS[name][1], device=device)
    record_race(benchmark, net, thresholds, "entropy", x, cost, 7 if name == "b-resnet110" else 11,
                f"branchynet {device} {name}", name)
