"""Wall-clock comparisons of real early exit with what it replaces."""
from __future__ import annotations

import time
from types import ModuleType
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, Sequence, TypeVar

import torch
from torch import nn

from eexit import ops
from eexit.runner import Thresholds, run_all_exits, run_early_exit, run_full_network

K = TypeVar("K", bound=Hashable)


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2,
              device: torch.device = torch.device("cpu")) -> float:
    """Median wall-clock milliseconds of fn() over reps calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def interleaved_medians(runs: Mapping[K, Callable[[], object]], reps: int,
                        device: torch.device = torch.device("cpu"),
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> Dict[K, float]:
    """Median ms of each of ``runs`` over ``reps`` rounds; every round times each run once, in turn,
    so machine drift hits them alike (each run's first call gets one untimed warm-up). ``progress``
    wraps the loop over rounds (e.g. a progress bar)."""
    samples: Dict[K, List[float]] = {name: [] for name in runs}
    for _ in progress(range(reps)):
        for name, fn in runs.items():
            samples[name].append(median_ms(fn, 1, warmup=0 if samples[name] else 1, device=device))
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def compare_early_exit(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x, thresholds: Thresholds,
                       criterion: str = "confidence", gate: ModuleType = ops, reps: int = 10) -> Dict[str, object]:
    """Median ms of real early exit, the full network and the all-exits simulation on batch x,
    interleaved per repetition so machine drift hits all three alike; plus the exit fractions.
    gate: :mod:`eexit.ops` or :mod:`eexit.reference`, as in :func:`eexit.runner.run_early_exit`."""
    device = (x if isinstance(x, torch.Tensor) else x[0]).device
    runs = {
        "infer_ms": lambda: run_early_exit(stages, exits, x, thresholds, criterion, gate),
        "full_ms": lambda: run_full_network(stages, exits, x),
        "simulate_ms": lambda: run_all_exits(stages, exits, x),
    }
    with torch.inference_mode():
        result: Dict[str, object] = dict(interleaved_medians(runs, reps, device))
        out = run_early_exit(stages, exits, x, thresholds, criterion, gate)
    n = max(out.exit_index.numel(), 1)
    result["exit_fractions"] = [float((out.exit_index == k).sum()) / n for k in range(len(exits))]
    return result
