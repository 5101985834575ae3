"""DenseConcatBlock forward: fused backend vs the eager reference vs torch.compile of the reference.

One pytest-benchmark group per (device, block shape, batch), so each group holds the three
contenders measured back to back in the same run, plus an ``interleaved`` entry whose rounds run
the three in turn (``eexit.timing.interleaved_medians``: drift of a shared machine hits them
alike); its medians are in extra_info and are what the target is judged on. Eval mode, inference mode, float32,
channels_last input (recorded as ``layout`` in extra_info). Summarise with
benchmarks/report_dense.py.

Shapes: the MSDNet CIFAR widths (16*s channels at 32/s px, growth 6*s, s in 1, 2, 4; 4 and 8
layers) and one DenseNet-BC block (64 channels at 28 px, growth 32, 12 layers, bn_size 4).
DenseNet-BC runs at batch 64 only unless EEXIT_BENCH_DENSE_BIG=1 (see BIG).
Target (CPU): fused >= 1.3x the eager reference (eager/fused medians) at every shape.

The fused and eager tests also record the memory of one forward in extra_info:
on CPU ``mem_alloc_bytes`` is the sum of the positive ``self_cpu_memory_usage`` over the events
of a torch.profiler trace (profile_memory=True), i.e. the bytes allocated during the forward
(temporaries freed again within the forward included), and ``mem_peak_bytes`` the highest running
sum of that trace's allocations and frees; on CUDA ``mem_peak_bytes`` is
torch.cuda.max_memory_allocated() above what was allocated before.
``out_bytes`` is the size of the output tensor.
On CUDA the tests run with TF32 off (fixture ieee_fp32), so every contender computes in IEEE fp32.
"""
import copy
import os
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from eexit.nn import DenseConcatBlock

from interleaved import record_interleaved

torch._dynamo.config.cache_size_limit = 256  # one static-shape graph per (shape, batch)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LAYOUT = torch.channels_last
LAYOUT_NAME = "channels_last"
DTYPE = torch.float32
TOL = dict(atol=1e-4, rtol=1e-4)

# (family, in_channels, px, growth, num_layers); bn_size 4 everywhere
SHAPES = [
    (f"msdnet-s{s}", 16 * s, 32 // s, 6 * s, layers) for s in (1, 2, 4) for layers in (4, 8)
] + [("densenet-bc", 64, 28, 32, 12)]
BATCHES = (64, 256)
# DenseNet-BC at batch 256 takes several seconds a call on a 2-core CPU and would push this file
# past its ~6 minute budget there: batch 64 only, unless EEXIT_BENCH_DENSE_BIG=1.
BIG = os.environ.get("EEXIT_BENCH_DENSE_BIG") == "1"
CASES = [(shape, n) for shape in SHAPES for n in BATCHES if BIG or shape[0] != "densenet-bc" or n == 64]
IMPLS = ("fused", "eager", "compile")

# pedantic rounds: about ROUND_BUDGET_S seconds of timed calls per benchmark, within [MIN, MAX]
ROUND_BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = 1.5, 3, 15


def case_id(case):
    (family, c, hw, g, layers), n = case
    return f"{family}-C{c}-H{hw}-g{g}-L{layers}-N{n}"


def randomise_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so folding really changes weights."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


_models = {}  # (device, shape) -> (fused-backend module, reference-backend copy, compiled copy)
_reference = {}  # the latest (device, shape, n) -> (input, reference output); one entry at a time


def models_for(device, shape):
    key = (device, shape)
    if key not in _models:
        _, c, _, g, layers = shape
        seed = c * 10_000 + g * 100 + layers  # deterministic (str hashes are salted per process)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # conv weights
        fused = DenseConcatBlock(c, g, layers, bn_size=4)
        randomise_bn(fused, gen)
        fused = fused.to(device=device, dtype=DTYPE).eval().set_backend("fused")
        ref = copy.deepcopy(fused).set_backend("reference")
        # static shapes: one graph per batch size, compiled and warmed up outside the timing
        _models[key] = (fused, ref, torch.compile(ref, dynamic=False))
    return _models[key]


def reference_for(device, shape, n):
    key = (device, shape, n)
    if key not in _reference:
        _reference.clear()
        _, c, hw, _, _ = shape
        gen = torch.Generator().manual_seed(n * 1000 + c)
        x = torch.randn(n, c, hw, hw, generator=gen).to(device=device, dtype=DTYPE, memory_format=LAYOUT)
        with torch.inference_mode():
            _reference[key] = (x, models_for(device, shape)[1](x))
    return _reference[key]


def timed(fn, device):
    if device == "cuda":
        def run(x):
            out = fn(x)
            torch.cuda.synchronize()
            return out
        return run
    return fn


def forward_memory(fn, x, device):
    """Memory of one forward (see the module docstring) as extra_info entries."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(x)
        torch.cuda.synchronize()
        return dict(mem_peak_bytes=torch.cuda.max_memory_allocated() - base,
                    mem_method="cuda.max_memory_allocated", out_bytes=out.numel() * out.element_size())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(x)
    alloc = sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)
    return dict(mem_alloc_bytes=alloc, mem_peak_bytes=cpu_peak(prof),
                mem_method="profiler sum(self_cpu_memory_usage > 0); peak of the [memory] events' running sum",
                out_bytes=out.numel() * out.element_size())


def cpu_peak(prof):
    """Highest running sum of the trace's allocations and frees (bytes above the level at its start),
    or None where this torch's profiler does not expose its [memory] events."""
    try:
        events = prof.profiler.kineto_results.events()
        mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except (AttributeError, RuntimeError):
        return None
    level = peak = 0
    for _, nbytes in mem:
        level += nbytes
        peak = max(peak, level)
    return peak


@pytest.fixture
def ieee_fp32(device):
    """On CUDA, IEEE fp32 products in cuDNN, cuBLAS and eexit's Triton kernels (which follow
    torch.backends.cudnn.allow_tf32) for the test, so the 1e-4 agreement check is meaningful."""
    if device != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("device", DEVICES)
def test_dense_block(benchmark, ieee_fp32, device, case, impl):
    shape, n = case
    family, c, hw, g, layers = shape
    fused, ref, compiled = models_for(device, shape)
    x, expected = reference_for(device, shape, n)
    fn = timed({"fused": fused, "eager": ref, "compile": compiled}[impl], device)
    with torch.inference_mode():
        start = time.perf_counter()
        out = fn(x)  # compiles for "compile"
        setup_s = call_s = time.perf_counter() - start
        if impl == "compile":
            start = time.perf_counter()
            out = fn(x)  # one warm call: its time sets the number of rounds
            call_s = time.perf_counter() - start
        # never time a wrong result: every contender matches the eager reference
        torch.testing.assert_close(out, expected, **TOL)
        assert out.shape == (n, c + layers * g, hw, hw)
        del out
        rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(call_s, 1e-6))))
        benchmark.group = f"dense_block {device} {family} C={c} H={hw} g={g} L={layers} N={n}"
        benchmark.extra_info.update(
            device=device, family=family, in_channels=c, px=hw, growth=g, num_layers=layers, bn_size=4,
            n=n, dtype=str(DTYPE).replace("torch.", ""), layout=LAYOUT_NAME, impl=impl, rounds=rounds,
            threads=torch.get_num_threads(), first_call_s=setup_s,
        )
        if impl != "compile":
            benchmark.extra_info.update(forward_memory(fn, x, device))
        benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("device", DEVICES)
def test_dense_block_interleaved(benchmark, ieee_fp32, device, case):
    shape, n = case
    family, c, hw, g, layers = shape
    fused, ref, compiled = models_for(device, shape)
    x, _ = reference_for(device, shape, n)
    runs = {"fused": lambda: fused(x), "eager": lambda: ref(x), "compile": lambda: compiled(x)}
    with torch.inference_mode():
        start = time.perf_counter()
        for fn in runs.values():
            fn()  # compiled and checked by test_dense_block
        rounds = max(MIN_ROUNDS, min(2 * MAX_ROUNDS, int(3 * ROUND_BUDGET_S / (time.perf_counter() - start))))
        benchmark.group = f"dense_block {device} {family} C={c} H={hw} g={g} L={layers} N={n}"
        record_interleaved(benchmark, runs, rounds, device, family=family, in_channels=c, px=hw, growth=g,
                           num_layers=layers, bn_size=4, n=n)
