"""Local response normalisation: eexit.ops.local_response_norm (one pass) vs PyTorch's
F.local_response_norm (a padded avg_pool3d) vs torch.compile of it, and eexit.nn.LocalResponseNorm
on both of its paths (inference: the op; reference: shifted channel slices, what trains).

One pytest-benchmark group per (layer, batch, memory format), one ``interleaved`` entry each
(contenders in turn every round, small cases called repeatedly for about ROUND_S seconds; medians).
CPU, float32, inference mode. Layers: the LRNs of B-AlexNet and B-ResNet-110 (official sizes:
n = 3, alpha = 3 x 5e-5, beta = 0.75, k = 2). Summarise with benchmarks/report_lrn.py. Target: the
module at least as fast as the faster of eager and compile (module / best >= 1) at every case.
"""

import pytest
import torch
import torch.nn.functional as F

import eexit
from eexit import ops

from interleaved import record_interleaved, repeated

torch._dynamo.config.cache_size_limit = 256

# (name, C, H = W): the input of each LRN
LAYERS = [("alexnet-stage0", 32, 16), ("alexnet-stage1", 64, 8), ("alexnet-exit1", 96, 4),
          ("resnet-exit0", 64, 30)]
BATCHES = (1, 64, 256)
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
ROUNDS = 15
ROUND_S = 1e-3
SIZE, ALPHA, BETA, K = 3, 1.5e-4, 0.75, 2.0


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("n", BATCHES, ids=[f"N{n}" for n in BATCHES])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_lrn(benchmark, layer, n, fmt):
    name, c, hw = layer
    torch.manual_seed(0)
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=FORMATS[fmt])
    module = eexit.nn.LocalResponseNorm(SIZE, ALPHA, BETA, K).eval()
    slices = eexit.nn.LocalResponseNorm(SIZE, ALPHA, BETA, K, backend="reference").eval()
    compiled = torch.compile(lambda t: F.local_response_norm(t, SIZE, ALPHA, BETA, K), dynamic=False)
    calls = {"op": lambda: ops.local_response_norm(x, SIZE, ALPHA, BETA, K),
             "eager": lambda: F.local_response_norm(x, SIZE, ALPHA, BETA, K),
             "compile": lambda: compiled(x), "slices": lambda: slices(x), "module": lambda: module(x)}
    with torch.inference_mode():
        want = F.local_response_norm(x, SIZE, ALPHA, BETA, K)
        for fn in calls.values():
            torch.testing.assert_close(fn(), want, atol=1e-5, rtol=1e-5)
        runs, repeat = repeated(calls, "op", ROUND_S)
        benchmark.group = f"lrn {name} N={n} {fmt}"
        record_interleaved(benchmark, runs, ROUNDS, "cpu", repeat, layer=name, n=n, fmt=fmt, elements=x.numel())
