"""Exit gate: fused op vs the eager composite vs torch.compile of the composite.

One pytest-benchmark group per (device, criterion, N, C), so each table row set compares the
three implementations measured in the same run. Each group also has an ``interleaved`` entry:
rounds in which the three contenders run in turn (``eexit.timing.interleaved_medians``), so that
drift of a shared machine hits them alike; its medians are in extra_info and are what the
targets are judged on. Summarise with benchmarks/report.py.
Targets (CPU): fused >= 4x eager and >= 2x torch.compile at every size.
"""

import pytest
import torch

from eexit import ops

from composites import gate_composite
from interleaved import record_interleaved, repeated

torch._dynamo.config.capture_dynamic_output_shape_ops = True  # nonzero inside the graph
torch._dynamo.config.cache_size_limit = 256

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZES = [(n, c) for n in (64, 256, 1024, 4096) for c in (10, 100, 1000)]
THRESHOLD = {"confidence": 0.5, "entropy": 1.0}
_compiled = torch.compile(gate_composite, dynamic=False)


def logits_for(n, c, device):
    scale = torch.rand(n, 1) * 8  # a mix of peaked and flat rows, so some rows exit and some stay
    return (torch.randn(n, c) * scale).to(device)


def timed(fn, device):
    if device == "cuda":
        def run(*args):
            out = fn(*args)
            torch.cuda.synchronize()
            return out
        return run
    return fn


IMPLS = {
    "fused": lambda x, t, c: ops.exit_gate(x, t, c),
    "eager": gate_composite,
    "compile": _compiled,
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("n,c", SIZES, ids=[f"N{n}-C{c}" for n, c in SIZES])
@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
@pytest.mark.parametrize("device", DEVICES)
def test_exit_gate(benchmark, device, criterion, n, c, impl):
    x = logits_for(n, c, device)
    thr = THRESHOLD[criterion]
    fn = timed(IMPLS[impl], device)
    with torch.inference_mode():
        for _ in range(3):  # compile and warm up outside the timing
            out = fn(x, thr, criterion)
        ref = ops.exit_gate(x, thr, criterion)
        # every contender computes the same argmax, except where the composite's softmax rounds two
        # close logits to one probability (its max over probabilities may then pick the other)
        differ = (out[2] != ref.pred).nonzero().flatten()
        p = torch.softmax(x[differ].float(), dim=1)
        assert torch.equal(p.gather(1, out[2][differ, None]), p.gather(1, ref.pred[differ, None])), differ
        benchmark.group = f"exit_gate {device} {criterion} N={n} C={c}"
        benchmark.extra_info.update(device=device, criterion=criterion, n=n, c=c, impl=impl)
        benchmark(fn, x, thr, criterion)


INTERLEAVED_ROUNDS = 41
ROUND_S = 2e-4  # each contender's share of a round is about this long: repeated calls for small gates


@pytest.mark.parametrize("n,c", SIZES, ids=[f"N{n}-C{c}" for n, c in SIZES])
@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
@pytest.mark.parametrize("device", DEVICES)
def test_exit_gate_interleaved(benchmark, device, criterion, n, c):
    x = logits_for(n, c, device)
    thr = THRESHOLD[criterion]
    fns = {name: timed(fn, device) for name, fn in IMPLS.items()}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(3):
                fn(x, thr, criterion)
        runs, calls = repeated({name: (lambda fn=fn: fn(x, thr, criterion)) for name, fn in fns.items()}, "fused",
                               ROUND_S)
        benchmark.group = f"exit_gate {device} {criterion} N={n} C={c}"
        record_interleaved(benchmark, runs, INTERLEAVED_ROUNDS, device, calls, criterion=criterion, n=n, c=c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n,c", [(1024, 1000), (4096, 1000), (16384, 1000)])
def test_read_once_cuda(benchmark, n, c):
    """Time to read the logits once (a row max): the bandwidth floor for the fused gate."""
    x = logits_for(n, c, "cuda")
    fn = timed(lambda t: t.amax(dim=1), "cuda")
    fn(x)
    benchmark.group = f"exit_gate cuda read-once N={n} C={c}"
    benchmark.extra_info.update(device="cuda", criterion="read-once", n=n, c=c, impl="read_once")
    benchmark(fn, x)
