"""Max pooling: eexit.ops.max_pool2d vs F.max_pool2d vs torch.compile of it, and eexit.nn.MaxPool2d
in inference mode (the op), at the pools of B-LeNet (2x2/2 ceil mode), B-AlexNet (3x3/2 ceil mode)
and MSDNet's and ResNet's stems (3x3/2 padding 1).

One pytest-benchmark group per (layer, batch, memory format), one ``interleaved`` entry each
(contenders in turn every round, small cases called repeatedly for about ROUND_S seconds; medians).
CPU, float32, inference mode. Summarise with benchmarks/report_max_pool.py. Target: the module at
least as fast as the faster of eager and compile (module / best >= 1) at every case.
"""

import pytest
import torch
import torch.nn.functional as F

import eexit
from eexit import ops

from interleaved import record_interleaved, repeated

torch._dynamo.config.cache_size_limit = 256

# (name, C, H = W, kernel, stride, padding, ceil_mode): the input of each pool
LAYERS = [("lenet-stage0", 5, 30, 2, 2, 0, True), ("lenet-branch", 10, 15, 2, 2, 0, True),
          ("lenet-conv2", 10, 17, 2, 2, 0, True), ("lenet-conv3", 20, 11, 2, 2, 0, True),
          ("alexnet-conv1", 32, 32, 3, 2, 0, True), ("alexnet-conv2", 64, 16, 3, 2, 0, True),
          ("stem-56", 64, 56, 3, 2, 1, False)]
BATCHES = (1, 64, 256)
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
ROUNDS = 15
ROUND_S = 1e-3


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("n", BATCHES, ids=[f"N{n}" for n in BATCHES])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_max_pool(benchmark, layer, n, fmt):
    name, c, hw, k, s, p, ceil = layer
    torch.manual_seed(0)
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=FORMATS[fmt])
    module = eexit.nn.MaxPool2d(k, s, p, ceil_mode=ceil).eval()
    compiled = torch.compile(lambda t: F.max_pool2d(t, k, s, p, ceil_mode=ceil), dynamic=False)
    calls = {"op": lambda: ops.max_pool2d(x, k, s, p, ceil), "eager": lambda: F.max_pool2d(x, k, s, p, ceil_mode=ceil),
             "compile": lambda: compiled(x), "module": lambda: module(x)}
    with torch.inference_mode():
        want = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        for fn in calls.values():
            assert torch.equal(fn(), want)
        runs, repeat = repeated(calls, "op", ROUND_S)
        benchmark.group = f"max_pool {name} N={n} {fmt}"
        record_interleaved(benchmark, runs, ROUNDS, "cpu", repeat, layer=name, n=n, fmt=fmt, elements=x.numel())
