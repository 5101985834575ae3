"""Streaming early exit (eexit.serve.EarlyExitEngine) against what a server would run instead.

B-LeNet (entropy) and MSDNet CIFAR-100 anytime (confidence), random weights, thresholds calibrated
on random inputs to geometric exit fractions (r = 0.5). A stream of N samples (default 4096;
EEXIT_BENCH_SERVE_N) in requests of 1, 4 and 16 samples, max_batch 256, max_wait_ms 5:

* closed loop (``test_serve_closed``): C = 512 / request size requests always outstanding, the
  engine's maximum throughput; in the same rounds (EEXIT_BENCH_SERVE_ROUNDS, default 3; medians
  reported, so drift of a shared machine hits all alike) the contenders on the same samples (at
  most EEXIT_BENCH_SERVE_CONTENDER_N, default 512, of them): ``infer`` per request, the full
  network per request, and offline ``infer`` at batch 256 (the ceiling). Targets at request size
  1: engine >= 4 x infer per request and >= 0.8 x offline infer.
* open loop (``test_serve_open``): Poisson arrivals at 25 %, 50 % and 90 % of the closed loop's
  throughput (measured here when that test did not run first); latency p50 / p99 from each
  scheduled arrival. Target at 50 %: p99 <= max_wait_ms + 3 x the batch service time (the sum over
  stages of their median batch durations: a batch's pass through the network).

Everything goes to ``benchmark.extra_info``; nothing is asserted. ``-k "N64-C10-"`` (make test's
smoke run) selects a B-LeNet stream of 64 single-sample requests with 10 clients: seconds.
"""
import os
import statistics

import pytest
import torch

from eexit.models import b_lenet, msdnet_cifar_anytime
from eexit.serve_bench import contender_throughputs, stream_benchmark

from early_exit_common import geometric_thresholds

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
N = int(os.environ.get("EEXIT_BENCH_SERVE_N", "4096"))
ROUNDS = int(os.environ.get("EEXIT_BENCH_SERVE_ROUNDS", "3"))
# per-request contenders are slow: their throughput from at most this many samples
CONTENDER_N = int(os.environ.get("EEXIT_BENCH_SERVE_CONTENDER_N", "512"))
MAX_BATCH, MAX_WAIT_MS = 256, 5.0
MODELS = {
    "b-lenet": (lambda: b_lenet(), (1, 28, 28), "entropy"),
    "msdnet-c100": (lambda: msdnet_cifar_anytime(100), (3, 32, 32), "confidence"),
}
# (model, request size, samples, clients); the last one is the smoke run's
CLOSED = [(m, r, N, 2 * MAX_BATCH // r) for m in MODELS for r in (1, 4, 16)] + [("b-lenet", 1, 64, 10)]
OPEN = [(m, r, load) for m in MODELS for r in (1, 4, 16) for load in (0.25, 0.5, 0.9)]
_setup, _max_throughput = {}, {}


def setup(name, device):
    if (name, device) not in _setup:
        build, size, criterion = MODELS[name]
        torch.manual_seed(0)
        net = build().eval().to(device)
        thresholds, fractions = geometric_thresholds(net, size, criterion)
        pool = torch.randn(1024, *size, device=device)
        _setup[name, device] = (net, thresholds, criterion, fractions, pool)
    return _setup[name, device]


def _exit_fractions(stats):
    total = sum(stats.exits)
    return [e / total for e in stats.exits] if total else []


def _stream_info(res) -> dict:
    s = res.stats
    return dict(throughput=res.throughput, p50_ms=res.p50_ms, p99_ms=res.p99_ms, mean_ms=res.mean_ms,
                requests=res.requests, samples=res.samples, dropped=res.dropped, mean_batch=list(s.mean_batch),
                stage_batches=list(s.stage_batches), median_batch_ms=[1e3 * v for v in s.median_batch_seconds],
                pass_ms=res.pass_ms, exit_fractions=_exit_fractions(s), peak_pending=s.peak_pending)


@pytest.mark.parametrize("name,size,n,clients", CLOSED, ids=[f"{m}-r{r}-N{n}-C{c}-closed" for m, r, n, c in CLOSED])
@pytest.mark.parametrize("device", DEVICES)
def test_serve_closed(benchmark, device, name, size, n, clients):
    net, thresholds, criterion, fractions, pool = setup(name, device)
    smoke = n < 256
    rounds = 1 if smoke else ROUNDS
    streams, contenders = [], []

    def run():
        for _ in range(rounds):
            streams.append(stream_benchmark(net, thresholds, criterion, pool, size, n, "closed", clients,
                                            max_batch=MAX_BATCH, max_wait_ms=MAX_WAIT_MS,
                                            warmup_samples=min(n, 1024)))
            contenders.append(contender_throughputs(net, thresholds, criterion, pool, size, min(n, CONTENDER_N)))

    benchmark.group = f"serve {device} {name} closed loop"
    benchmark.pedantic(run, rounds=1, iterations=1)
    best = statistics.median(s.throughput for s in streams)
    others = {k: statistics.median(c[k] for c in contenders) for k in contenders[0]}
    if not smoke:
        _max_throughput[name, device, size] = best
    median_run = sorted(streams, key=lambda s: s.throughput)[len(streams) // 2]
    info = _stream_info(median_run)
    info.update(throughput=best, throughput_rounds=[s.throughput for s in streams])
    benchmark.extra_info.update(
        device=device, model=name, impl="engine", mode="closed", request_size=size, n_samples=n, clients=clients,
        rounds=rounds, max_batch=MAX_BATCH, max_wait_ms=MAX_WAIT_MS, target_fractions=fractions,
        contenders=others, speedup_vs_infer=best / others["infer per request"],
        speedup_vs_full=best / others["full per request"], fraction_of_offline=best / others["offline infer"],
        **info)


@pytest.mark.parametrize("name,size,load", OPEN, ids=[f"{m}-r{r}-N{N}-L{round(100 * x)}-open" for m, r, x in OPEN])
@pytest.mark.parametrize("device", DEVICES)
def test_serve_open(benchmark, device, name, size, load):
    net, thresholds, criterion, fractions, pool = setup(name, device)
    if (name, device, size) not in _max_throughput:  # test_serve_closed did not run first
        closed = stream_benchmark(net, thresholds, criterion, pool, size, N, "closed", max_batch=MAX_BATCH,
                                  max_wait_ms=MAX_WAIT_MS)
        _max_throughput[name, device, size] = closed.throughput
    peak = _max_throughput[name, device, size]
    out = []
    benchmark.group = f"serve {device} {name} open loop r={size}"
    benchmark.pedantic(lambda: out.append(stream_benchmark(
        net, thresholds, criterion, pool, size, N, "open", load=load, max_throughput=peak, max_batch=MAX_BATCH,
        max_wait_ms=MAX_WAIT_MS, warmup_samples=min(N, 1024))), rounds=1, iterations=1)
    res = out[0]
    bound = MAX_WAIT_MS + 3 * res.pass_ms
    benchmark.extra_info.update(
        device=device, model=name, impl="engine", mode="open", request_size=size, n_samples=N, load=load,
        max_throughput=peak, offered_rate=res.rate, max_batch=MAX_BATCH, max_wait_ms=MAX_WAIT_MS,
        target_fractions=fractions, p99_bound_ms=bound, p99_within_bound=res.p99_ms <= bound, **_stream_info(res))
