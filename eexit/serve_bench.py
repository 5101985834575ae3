"""Streaming benchmark of :class:`eexit.serve.EarlyExitEngine` and what it replaces.

:func:`stream_benchmark` feeds an engine a stream of requests of ``request_size`` samples cut from a
pool of samples, either in a closed loop (``clients`` requests always outstanding: each answer
brings the next request; the engine's maximum throughput) or in an open loop (Poisson arrivals at a
given rate, or at ``load`` times a maximum throughput: latency at that load), and returns throughput
and latency percentiles. :func:`contender_throughputs` times the alternatives on the same samples:
``infer`` per request, the full network per request (:func:`eexit.runner.run_full_network`) and
offline ``infer`` on large batches (the throughput ceiling of a stream that may wait for a full batch).

Timings are wall-clock on whatever else the machine runs; the benchmark functions only measure.
With ``freeze_gc`` (the default) they run after ``gc.collect(); gc.freeze()`` (undone afterwards),
as a tuned server would after loading its model: the engine allocates a few objects per request,
and without it Python's full collections walk every object of the process (torch's included,
about 10^5) every few thousand requests, which costs a model as cheap as B-LeNet about a fifth
of its throughput at one sample per request.
"""
from __future__ import annotations

import contextlib
import gc
import math
import random
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Union

import torch

from eexit.runner import Thresholds, run_full_network
from eexit.serve import EarlyExitEngine, EngineOverloaded, EngineStats

__all__ = ["StreamResult", "contender_throughputs", "make_requests", "stream_benchmark"]

#: the clock of every timing here (seconds)
clock: Callable[[], float] = time.perf_counter
#: the longest a benchmark waits for its last answer before it gives up (seconds)
ANSWER_TIMEOUT_S = 600.0

Source = Union[torch.Tensor, Callable[[int], torch.Tensor]]


class StreamResult(NamedTuple):
    """One stream through an engine. mode "closed" or "open"; clients (closed loop: requests kept
    outstanding) or rate (open loop: offered requests per second); requests and samples answered;
    dropped: open-loop requests the engine refused (:class:`~eexit.serve.EngineOverloaded`);
    seconds from the first submission to the last answer; throughput in samples per second; latency
    (submission, or scheduled arrival in the open loop, to answer) of the requests in milliseconds:
    p50, p99 and mean; stats: the engine's :class:`~eexit.serve.EngineStats` over the stream;
    pass_ms: the sum over stages of their median batch durations (a batch's service time through
    the network)."""

    mode: str
    request_size: int
    clients: Optional[int]
    rate: Optional[float]
    requests: int
    samples: int
    dropped: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    stats: EngineStats
    pass_ms: float


def make_requests(source: Source, request_size: int, n_samples: int) -> List[torch.Tensor]:
    """ceil(n_samples / request_size) requests of request_size samples (the last may be smaller):
    consecutive rows of the pool ``source`` (a tensor [N, ...], rows reused cyclically), or
    ``source(n)`` for each."""
    if request_size < 1 or n_samples < 1:
        raise ValueError(f"request_size and n_samples must be >= 1, got {request_size} and {n_samples}")
    sizes = [min(request_size, n_samples - i) for i in range(0, n_samples, request_size)]
    if callable(source):
        return [source(n) for n in sizes]
    pool_n = source.shape[0]
    out, start = [], 0
    for n in sizes:
        idx = torch.arange(start, start + n) % pool_n
        out.append(source[start: start + n] if start + n <= pool_n else source.index_select(0, idx.to(source.device)))
        start = (start + n) % pool_n
    return out


@contextlib.contextmanager
def _frozen_gc(freeze: bool):
    if not freeze:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _percentile(values: List[float], q: float) -> float:
    if not values:
        return math.nan
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def _closed_loop(engine: EarlyExitEngine, requests: List[torch.Tensor], clients: int) -> tuple:
    """Keeps ``clients`` requests outstanding: each answer's callback (on the engine's worker thread)
    submits the next request, so no client thread competes with the worker for the interpreter lock
    and the engine's own ceiling is measured."""
    latencies: List[float] = []
    errors: List[BaseException] = []
    finished = threading.Event()
    lock = threading.Lock()
    sent = [0]

    def send() -> None:
        with lock:
            if sent[0] == len(requests):
                return
            i = sent[0]
            sent[0] += 1
        t = clock()
        engine.submit(requests[i]).add_done_callback(lambda fut, t=t: done(fut, t))

    def done(fut, t: float) -> None:
        latencies.append(clock() - t)
        if fut.exception() is not None:
            errors.append(fut.exception())
        if len(latencies) == len(requests):
            finished.set()
        send()

    start = clock()
    for _ in range(min(clients, len(requests))):
        send()
    if not finished.wait(ANSWER_TIMEOUT_S):
        raise TimeoutError(f"closed loop: {len(requests) - len(latencies)} requests unanswered after "
                           f"{ANSWER_TIMEOUT_S} s")
    if errors:
        raise errors[0]
    return clock() - start, latencies, 0


def _open_loop(engine: EarlyExitEngine, requests: List[torch.Tensor], rate: float, seed: int) -> tuple:
    """Poisson arrivals at ``rate`` requests per second; latency from each scheduled arrival (so a
    late submission counts against the engine); a refused request (the engine is full) is dropped."""
    rng = random.Random(seed)
    latencies: List[float] = []
    futures = []
    dropped = 0
    start = clock()
    due = start
    for r in requests:
        due += rng.expovariate(rate)
        wait = due - clock()
        if wait > 0:
            time.sleep(wait)
        try:
            f = engine.submit(r, timeout=0)
        except EngineOverloaded:
            dropped += 1
            continue
        f.add_done_callback(lambda fut, t=due: latencies.append(clock() - t))
        futures.append(f)
    for f in futures:
        f.result(ANSWER_TIMEOUT_S)
    end = clock()
    while len(latencies) < len(futures):  # the last callbacks may run just after result() returns
        time.sleep(1e-4)
    return end - start, latencies, dropped


def stream_benchmark(model, thresholds: Thresholds, criterion: str = "confidence", source: Source = None,
                     request_size: int = 1, n_samples: int = 4096, mode: str = "closed",
                     clients: Optional[int] = None, load: Optional[float] = None, rate: Optional[float] = None,
                     max_throughput: Optional[float] = None, max_batch: int = 256, max_wait_ms: float = 5.0,
                     max_pending: Optional[int] = None, warmup_samples: Optional[int] = None,
                     seed: int = 0, freeze_gc: bool = True) -> StreamResult:
    """A stream of n_samples in requests of request_size (:func:`make_requests` from ``source``)
    through a fresh :class:`~eexit.serve.EarlyExitEngine` (``max_batch``, ``max_wait_ms``,
    ``max_pending``), after a closed-loop warm-up of ``warmup_samples`` (default min(n_samples, 1024)).

    mode "closed": ``clients`` requests outstanding (default enough for two full first-stage batches,
    ``2 * max_batch // request_size``), the engine's maximum throughput. mode "open": Poisson
    arrivals at ``rate`` requests per second, or at ``load`` (a fraction) of ``max_throughput``
    samples per second (measured first by a closed loop on the same stream when not given).
    max_pending defaults to the engine's, at least what the closed loop keeps outstanding.
    freeze_gc: see the module docstring."""
    if mode not in ("closed", "open"):
        raise ValueError(f"mode must be 'closed' or 'open', got {mode!r}")
    if source is None:
        raise ValueError("source: a pool of samples (a tensor [N, ...]) or a function n -> n samples is needed")
    requests = make_requests(source, request_size, n_samples)
    if clients is None:
        clients = max(1, 2 * max_batch // request_size)
    if mode == "open" and rate is None:
        if load is None or not load > 0:
            raise ValueError("mode='open' needs rate (requests/s) or load (a fraction > 0 of max_throughput)")
        if max_throughput is None:
            max_throughput = stream_benchmark(model, thresholds, criterion, source, request_size, n_samples, "closed",
                                              clients, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                              max_pending=max_pending, warmup_samples=warmup_samples,
                                              freeze_gc=freeze_gc).throughput
        rate = load * max_throughput / request_size
    if max_pending is None:
        max_pending = max(16 * max_batch, clients * request_size)
    n_warm = min(n_samples, 1024) if warmup_samples is None else warmup_samples
    warm = make_requests(source, request_size, n_warm) if n_warm > 0 else []
    with _frozen_gc(freeze_gc), EarlyExitEngine(model, thresholds, criterion, max_batch=max_batch,
                                                max_wait_ms=max_wait_ms, max_pending=max_pending) as engine:
        if warm:
            _closed_loop(engine, warm, clients)
        engine.reset_stats()
        if mode == "closed":
            seconds, latencies, dropped = _closed_loop(engine, requests, clients)
        else:
            seconds, latencies, dropped = _open_loop(engine, requests, rate, seed)
    stats = engine.stats()  # once closed: the worker records a batch after answering its requests
    answered = stats.samples
    return StreamResult(
        mode, request_size, clients if mode == "closed" else None, rate if mode == "open" else None,
        stats.completed, answered, dropped, seconds, answered / seconds if seconds > 0 else math.inf,
        1e3 * _percentile(latencies, 0.5), 1e3 * _percentile(latencies, 0.99),
        1e3 * sum(latencies) / max(len(latencies), 1), stats, 1e3 * sum(stats.median_batch_seconds))


def contender_throughputs(model, thresholds: Thresholds, criterion: str = "confidence", source: Source = None,
                          request_size: int = 1, n_samples: int = 1024, offline_batch: int = 256,
                          warmup: int = 3, freeze_gc: bool = True) -> Dict[str, float]:
    """Samples per second of what a server would run instead of the engine, on the stream of
    :func:`make_requests` (one thread, inference mode, each after ``warmup`` untimed calls):
    "infer per request" (``model.infer`` on each request), "full per request" (the whole network,
    last exit, on each request) and "offline infer" (``model.infer`` on batches of offline_batch
    of the same samples: no request waits for anything, the stream's ceiling). freeze_gc: as for
    :func:`stream_benchmark`."""
    requests = make_requests(source, request_size, n_samples)
    batches = make_requests(source, offline_batch, n_samples)
    stages, exits = model.running_stages()
    runs = {
        "infer per request": (lambda r: model.infer(r, thresholds, criterion), requests),
        "full per request": (lambda r: run_full_network(stages, exits, r), requests),
        "offline infer": (lambda r: model.infer(r, thresholds, criterion), batches),
    }
    out = {}
    with _frozen_gc(freeze_gc), torch.inference_mode():
        for name, (fn, items) in runs.items():
            for r in items[:warmup]:
                fn(r)
            _sync(items[0])
            start = clock()
            for r in items:
                fn(r)
            _sync(items[0])
            out[name] = n_samples / (clock() - start)
    return out


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
