"""The ``interleaved`` entry of a benchmark group: rounds that run every contender in turn
(``eexit.timing.interleaved_medians``), so that drift of a shared machine hits them alike."""
import time
from typing import Callable, Dict, Tuple

import torch

from eexit.timing import interleaved_medians


def record_interleaved(benchmark, runs: Dict[str, Callable[[], object]], rounds: int, device: str,
                       calls_per_run: int = 1, impl: str = "interleaved", **info) -> None:
    """Times ``runs`` as one pytest-benchmark entry (``impl``, by default "interleaved") and stores each contender's
    median seconds per call in ``extra_info["median_s"]`` (each run makes ``calls_per_run`` calls), with
    ``device`` and ``info`` (the group's configuration)."""
    medians = {}
    benchmark.pedantic(lambda: medians.update(interleaved_medians(runs, rounds, torch.device(device))),
                       rounds=1, iterations=1)
    benchmark.extra_info.update(info, device=device, impl=impl, rounds=rounds, calls_per_round=calls_per_run,
                                median_s={name: ms / calls_per_run / 1e3 for name, ms in medians.items()})


def repeated(calls: Dict[str, Callable[[], object]], probe: str,
             round_s: float) -> Tuple[Dict[str, Callable[[], object]], int]:
    """Each of ``calls`` repeated as often as ``calls[probe]`` (timed once here) fits in ``round_s``
    seconds: small calls are then timed warm in every round, not by their cold start. Returns (the
    repeated runs, calls per run) for :func:`record_interleaved`."""
    start = time.perf_counter()
    calls[probe]()
    n = max(1, int(round_s / max(time.perf_counter() - start, 1e-7)))
    def run(fn: Callable[[], object]) -> None:
        for _ in range(n):  # each result dropped at once, as in a network: no fresh memory per call
            fn()

    return {name: (lambda fn=fn: run(fn)) for name, fn in calls.items()}, n
