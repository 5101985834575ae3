"""Wall-clock comparisons of real early exit with what it replaces."""
from __future__ import annotations

import math
import time
from types import ModuleType
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, NamedTuple, Optional, Sequence, TypeVar

import torch
from torch import nn

from eexit import ops
from eexit.runner import Thresholds, run_all_exits, run_early_exit, run_full_network

K = TypeVar("K", bound=Hashable)

#: the clock of every timing here (seconds); a test may replace it to make timings deterministic
clock: Callable[[], float] = time.perf_counter
#: a timing whose slowest repetition took more than this many times its fastest is noisy
NOISY_RATIO = 1.5


class Spread(NamedTuple):
    """The repetitions of one timing: fastest, median (the upper one of an even count) and slowest
    milliseconds, and how many there were."""

    min_ms: float
    median_ms: float
    max_ms: float
    reps: int

    @property
    def ratio(self) -> float:
        """Slowest over fastest (inf when the fastest took no measurable time but the slowest did)."""
        if self.min_ms > 0:
            return self.max_ms / self.min_ms
        return 1.0 if self.max_ms <= 0 else math.inf


def spread(samples_ms: Sequence[float]) -> Spread:
    """:class:`Spread` of the milliseconds of a timing's repetitions (at least one)."""
    if not samples_ms:
        raise ValueError("spread: no repetitions")
    v = sorted(samples_ms)
    return Spread(v[0], v[len(v) // 2], v[-1], len(v))


def noisy_warning(spreads: Mapping[str, Spread], ratio: float = NOISY_RATIO) -> Optional[str]:
    """A one-line warning when some timing of ``spreads`` (named by its key) has a slowest repetition
    more than ``ratio`` times its fastest, naming the worst one; None when all are steady."""
    worst = max(spreads.items(), key=lambda kv: kv[1].ratio, default=None)
    if worst is None or not worst[1].ratio > ratio:
        return None
    name, s = worst
    noisy = sum(1 for v in spreads.values() if v.ratio > ratio)
    ms = lambda v: f"{v:.3g}" if v < 100 else f"{v:.0f}"  # noqa: E731
    return (f"noisy machine: {noisy} of {len(spreads)} timings vary by more than {ratio:g}x between their fastest "
            f"and slowest run (worst: {name}, {ms(s.min_ms)} to {ms(s.max_ms)} ms, {s.ratio:.1f}x); other work "
            f"competes for this machine, so compare medians with care, or rerun with more repetitions on a quiet one")


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2,
              device: torch.device = torch.device("cpu")) -> float:
    """Median wall-clock milliseconds of fn() over reps calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def interleaved_spreads(runs: Mapping[K, Callable[[], object]], reps: int,
                        device: torch.device = torch.device("cpu"),
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> Dict[K, Spread]:
    """Fastest, median and slowest ms (:class:`Spread`) of each of ``runs`` over ``reps`` rounds; every
    round times each run once, in turn, so machine drift hits them alike (each run's first call gets
    one untimed warm-up). ``progress`` wraps the loop over rounds (e.g. a progress bar)."""
    samples: Dict[K, List[float]] = {name: [] for name in runs}
    for _ in progress(range(reps)):
        for name, fn in runs.items():
            samples[name].append(median_ms(fn, 1, warmup=0 if samples[name] else 1, device=device))
    return {name: spread(v) for name, v in samples.items()}


def interleaved_medians(runs: Mapping[K, Callable[[], object]], reps: int,
                        device: torch.device = torch.device("cpu"),
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> Dict[K, float]:
    """Median ms of each of ``runs``: :func:`interleaved_spreads`' medians."""
    return {name: s.median_ms for name, s in interleaved_spreads(runs, reps, device, progress).items()}


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
