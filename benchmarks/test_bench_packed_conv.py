"""Convolutions on channels_last CPU input: eexit's packed oneDNN convolution
(eexit.nn.packed_conv.conv2d_onednn, the weight packed once) vs F.conv2d (oneDNN reorders the plain
weight on every call) eager and under torch.compile, and eexit.nn.Conv2d's inference path.

One pytest-benchmark group per (layer, batch), one ``interleaved`` entry each (contenders in turn
every round, small cases called repeatedly for about ROUND_S seconds; medians). CPU, float32,
inference mode, channels_last. Layers: the second 3x3 convolution of each stage of a ResNet-18 at
32 px (what attach_exits cuts in test_bench_attach.py) and MSDNet ImageNet's finest-scale 3x3;
batches from 1 (samples left for a deep stage) to 256. Summarise with
benchmarks/report_packed_conv.py. Target: the module at least as fast as the faster of eager and
compile at every case.
"""

import pytest
import torch
import torch.nn.functional as F

import eexit
from eexit.nn.execution import FoldCache
from eexit.nn.packed_conv import conv2d_onednn

from interleaved import record_interleaved, repeated

torch._dynamo.config.cache_size_limit = 256

# (name, C, H = W): C -> C 3x3 convolutions, padding 1
LAYERS = [("resnet18-layer1", 64, 8), ("resnet18-layer2", 128, 4), ("resnet18-layer3", 256, 2),
          ("resnet18-layer4", 512, 1), ("msdnet-imagenet-s0", 32, 56)]
BATCHES = (1, 8, 64, 256)
ROUNDS = 15
ROUND_S = 1e-3


@pytest.mark.parametrize("n", BATCHES, ids=[f"N{n}" for n in BATCHES])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_packed_conv(benchmark, layer, n):
    name, c, hw = layer
    if name.startswith("msdnet") and n > 64:
        pytest.skip("MSDNet ImageNet runs at batch 16")
    torch.manual_seed(0)
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
    module = eexit.nn.Conv2d(c, c, 3, padding=1).eval()
    w, b = module.weight.detach(), module.bias.detach()
    cache = FoldCache()
    compiled = torch.compile(lambda t: F.conv2d(t, w, b, padding=1), dynamic=False)
    calls = {"op": lambda: conv2d_onednn(x, module, w, b, cache, "packed", [w]),
             "eager": lambda: F.conv2d(x, w, b, padding=1),
             "compile": lambda: compiled(x), "module": lambda: module(x)}
    with torch.inference_mode():
        want = F.conv2d(x, w, b, padding=1)
        for fn in calls.values():
            torch.testing.assert_close(fn(), want, atol=1e-4, rtol=1e-4)
        runs, repeat = repeated(calls, "op", ROUND_S)
        benchmark.group = f"packed_conv {name} N={n}"
        record_interleaved(benchmark, runs, ROUNDS, "cpu", repeat, layer=name, n=n, fmt="channels_last",
                           elements=x.numel())
