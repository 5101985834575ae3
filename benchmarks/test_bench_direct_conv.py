"""Direct convolution (eexit.ops.direct_conv2d) vs F.conv2d (oneDNN on CPU) vs torch.compile of it,
and eexit.nn.Conv2d (which picks one of them by eexit.nn.direct_conv.direct_conv_pays).

One pytest-benchmark group per (layer, batch, memory format), one ``interleaved`` entry each: the
contenders run in turn in every round (``eexit.timing.interleaved_medians``; small layers called
repeatedly in a round, about ROUND_S seconds each, so that a call's time is not its cold start), medians. CPU, float32,
inference mode. Layers: B-LeNet's (where the op is meant to win), and B-AlexNet's and B-ResNet-110's
stride-1 layers (where the rule must fall back to oneDNN at larger batches). Summarise with
benchmarks/report_direct_conv.py. Target: eexit.nn.Conv2d is never slower than the faster of eager
and compile by more than timing noise (module / best >= 0.9 at every case).
"""

import pytest
import torch
import torch.nn.functional as F

import eexit
from eexit import ops

from interleaved import record_interleaved, repeated

torch._dynamo.config.cache_size_limit = 256

# (name, C_in, C_out, kernel, H = W, padding)
LAYERS = [
    ("lenet-conv1", 1, 5, 5, 28, 3), ("lenet-branch", 5, 10, 3, 15, 1), ("lenet-conv2", 5, 10, 5, 15, 3),
    ("lenet-conv3", 10, 20, 5, 9, 3), ("alexnet-conv1", 3, 32, 5, 32, 2), ("alexnet-conv3", 64, 96, 3, 8, 1),
    ("resnet-stem", 3, 16, 3, 32, 0), ("resnet-s1", 16, 16, 3, 32, 1), ("resnet-s2", 32, 32, 3, 16, 1),
    ("resnet-s3", 64, 64, 3, 8, 1),
]
BATCHES = (1, 16, 64, 256)
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
ROUNDS = 15
ROUND_S = 1e-3  # each contender's share of a round is about this long: repeated calls for small layers


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("n", BATCHES, ids=[f"N{n}" for n in BATCHES])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_direct_conv(benchmark, layer, n, fmt):
    name, c_in, c_out, k, hw, pad = layer
    torch.manual_seed(0)
    conv = eexit.nn.Conv2d(c_in, c_out, k, padding=pad).eval()
    x = torch.randn(n, c_in, hw, hw).contiguous(memory_format=FORMATS[fmt])
    w, b = conv.weight.detach(), conv.bias.detach()
    compiled = torch.compile(lambda t: F.conv2d(t, w, b, padding=pad), dynamic=False)
    calls = {"direct": lambda: ops.direct_conv2d(x, w, b, pad), "eager": lambda: F.conv2d(x, w, b, padding=pad),
             "compile": lambda: compiled(x), "module": lambda: conv(x)}
    with torch.inference_mode():
        want = F.conv2d(x, w, b, padding=pad)
        for fn in calls.values():
            torch.testing.assert_close(fn(), want, atol=1e-4, rtol=1e-4)
        runs, repeat = repeated(calls, "eager", ROUND_S)
        benchmark.group = f"direct_conv {name} N={n} {fmt}"
        record_interleaved(benchmark, runs, ROUNDS, "cpu", repeat, layer=name, n=n, fmt=fmt,
                           direct=eexit.nn.direct_conv.direct_conv_pays(x, conv),
                           macs=n * c_out * c_in * k * k * (hw + 2 * pad - k + 1) ** 2)
