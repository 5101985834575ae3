"""Wall-clock comparisons of real early exit with what it replaces."""
from __future__ import annotations

import time
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence, TypeVar

import torch
from torch import nn

from eexit.progress import bar
from eexit.runner import Thresholds, run_early_exit

K = TypeVar("K", bound=Hashable)


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2, device: torch.device = torch.device("cpu")) -> float:
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
                        device: torch.device = torch.device("cpu"), desc: Optional[str] = None) -> Dict[K, float]:
    """Median ms of each of ``runs`` over ``reps`` rounds; every round times each run once, in turn,
    so machine drift hits them alike (each run's first call gets one untimed warm-up). With ``desc``
    a progress bar counts the rounds."""
    samples: Dict[K, List[float]] = {name: [] for name in runs}
    rounds = range(reps) if desc is None else bar(range(reps), desc=desc)
    for _ in rounds:
        for name, fn in runs.items():
            samples[name].append(median_ms(fn, 1, warmup=0 if samples[name] else 1, device=device))
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def full_network(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x) -> torch.Tensor:
    """The backbone alone: every stage, then only the final exit (no early exit)."""
    h = x
    for stage in stages:
        h = stage(h)
    return exits[-1](h)


def all_exits(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x) -> list:
    """The official-style simulation: every stage and every exit for every sample."""
    out, h = [], x
    for stage, head in zip(stages, exits):
        h = stage(h)
        out.append(head(h))
    return out


def compare_early_exit(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x, thresholds: Thresholds,
                       criterion: str = "confidence", use_reference: bool = False, reps: int = 10) -> Dict[str, object]:
    """Median ms of real early exit, the full network and the all-exits simulation on batch x,
    interleaved per repetition so machine drift hits all three alike; plus the exit fractions."""
    device = (x if isinstance(x, torch.Tensor) else x[0]).device
    runs = {
        "infer_ms": lambda: run_early_exit(stages, exits, x, thresholds, criterion, use_reference),
        "full_ms": lambda: full_network(stages, exits, x),
        "simulate_ms": lambda: all_exits(stages, exits, x),
    }
    with torch.inference_mode():
        result: Dict[str, object] = dict(interleaved_medians(runs, reps, device))
        out = run_early_exit(stages, exits, x, thresholds, criterion, use_reference)
    n = max(out.exit_index.numel(), 1)
    result["exit_fractions"] = [float((out.exit_index == k).sum()) / n for k in range(len(exits))]
    return result
