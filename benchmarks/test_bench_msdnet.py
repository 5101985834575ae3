"""MSDNet CIFAR-100 anytime preset: real early exit vs the full network vs the official-style
simulation (every classifier for every sample), batch 256, fused backend (eval, inference mode);
and a race against the reference model eager and under torch.compile (test_msdnet_race_stock).

Random weights; thresholds by budgeted calibration on random images, with geometric exit
fractions chosen so the expected cost is 40% of the full network's. Target on CPU: speedup
(full / infer) >= 0.85 x (full cost / expected cost), judged on the ``interleaved`` entry (rounds
that run the three contenders in turn, so drift of a shared machine hits them alike).
Summarise with benchmarks/report_early_exit.py.
"""
import pytest
import torch

from eexit.calibrate import fractions_for_cost
from eexit.models import msdnet_cifar_anytime, msdnet_imagenet

from early_exit_common import calibrate, contenders, costs, exit_fractions, record_race
from interleaved import record_interleaved

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TARGET_COST = 0.40
_cache = {}


def setup(device):
    if device not in _cache:
        torch.manual_seed(0)
        net = msdnet_cifar_anytime(100).eval().to(device)
        cost = costs(net, (3, 32, 32))
        fractions = fractions_for_cost(cost["exit_costs"], TARGET_COST * cost["full_cost"])
        thresholds = calibrate(net, torch.randn(512, 3, 32, 32, device=device), fractions, "confidence")
        _cache[device] = (net, thresholds, cost, fractions)
    return _cache[device]


@pytest.mark.parametrize("impl", ["infer", "full", "simulate"])
@pytest.mark.parametrize("device", DEVICES)
def test_msdnet(benchmark, device, impl):
    net, thresholds, cost, fractions = setup(device)
    x = torch.randn(256, 3, 32, 32, device=device)
    fn = contenders(net, thresholds, "confidence")[impl]
    with torch.inference_mode():
        if impl == "infer":
            out = fn(x)
            benchmark.extra_info["exit_fractions"] = exit_fractions(out, len(fractions))
        benchmark.group = f"msdnet {device} cifar100-anytime batch=256"
        benchmark.extra_info.update(device=device, model="msdnet-cifar-anytime", batch=256, impl=impl,
                                    target_fractions=fractions, **cost)
        benchmark.pedantic(fn, args=(x,), rounds=11, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device", DEVICES)
def test_msdnet_interleaved(benchmark, device):
    net, thresholds, cost, fractions = setup(device)
    x = torch.randn(256, 3, 32, 32, device=device)
    runs = {impl: (lambda fn=fn: fn(x)) for impl, fn in contenders(net, thresholds, "confidence").items()}
    with torch.inference_mode():
        benchmark.group = f"msdnet {device} cifar100-anytime batch=256"
        record_interleaved(benchmark, runs, 15, device, model="msdnet-cifar-anytime", batch=256)


@pytest.mark.parametrize("batch", [64, 256, 1024])
@pytest.mark.parametrize("device", DEVICES)
def test_msdnet_race_stock(benchmark, device, batch):
    """eexit vs the reference model eager and under torch.compile (channels_last), interleaved."""
    net, thresholds, cost, fractions = setup(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    record_race(benchmark, net, thresholds, "confidence", x, cost, 9, f"msdnet {device} cifar100-anytime",
                "msdnet-cifar-anytime")


@pytest.mark.parametrize("device", DEVICES)
def test_msdnet_imagenet_race_stock(benchmark, device):
    """MSDNet ImageNet step 4, batch 16, 224 px: the full-network target (fused >= torch.compile)."""
    torch.manual_seed(0)
    net = msdnet_imagenet(4, 1000).eval().to(device)
    cost = costs(net, (3, 224, 224))
    fractions = fractions_for_cost(cost["exit_costs"], TARGET_COST * cost["full_cost"])
    thresholds = calibrate(net, torch.randn(64, 3, 224, 224, device=device), fractions, "confidence")
    x = torch.randn(16, 3, 224, 224, device=device)
    record_race(benchmark, net, thresholds, "confidence", x, cost, 7, f"msdnet {device} imagenet-step4",
                "msdnet-imagenet-step4")


def test_msdnet_gate_place(benchmark):
    """eexit.compile with the gate and compaction between the compiled graphs (the default) vs
    inside them (gate="inside": each stage, exit, gate and compaction one graph), and the fused
    eager infer, CPU, batch 256, interleaved rounds; each compiled model warmed up first with the
    thresholds used (the gated graphs specialise on them) in inference mode."""
    import copy
    import time

    import eexit

    net, thresholds, cost, fractions = setup("cpu")
    x = torch.randn(256, 3, 32, 32)
    models = {"infer fused": net}
    warm = {}
    for place in ("between", "inside"):
        start = time.perf_counter()
        model = eexit.compile(copy.deepcopy(net), gate=place, example_input=x[:16])
        with torch.inference_mode():
            for n in (1, 2, 16, 256):
                model.infer(x[:n].clone(), thresholds)
        warm[place] = time.perf_counter() - start
        models[f"infer compiled, gate {place}"] = model
    runs = {name: (lambda m=m: m.infer(x, thresholds)) for name, m in models.items()}
    with torch.inference_mode():
        want = net.infer(x, thresholds).exit_index
        same = {name: float((m.infer(x, thresholds).exit_index == want).float().mean()) for name, m in models.items()}
        assert min(same.values()) > 0.95, same  # compiled arithmetic may flip a sample at a threshold, not more
        benchmark.group = "msdnet cpu cifar100-anytime batch=256 gate place"
        record_interleaved(benchmark, runs, 11, "cpu", model="msdnet-cifar-anytime", batch=256,
                           warmup_s=warm, same_exit_as_eager=same, **cost)
