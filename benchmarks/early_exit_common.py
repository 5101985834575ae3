"""Shared set-up of the early-exit benchmarks: thresholds calibrated to target exit fractions,
costs, and the three contenders (real early exit, full network, all-exits simulation)."""
import copy
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import eexit
from eexit.calibrate import budgeted_thresholds, geometric_exit_fractions
from eexit.flops import actual_exit_costs, stage_costs
from eexit.reference import gate_scores
from eexit.runner import run_all_exits, run_early_exit, run_full_network

from interleaved import record_interleaved


def calibrate(net, x_cal: torch.Tensor, fractions: Sequence[float], criterion: str) -> List[float]:
    """Thresholds so that about fractions[k] of x_cal's samples leave at exit k."""
    with torch.inference_mode():
        logits = net(x_cal)
    scores = torch.stack([gate_scores(z, criterion) for z in logits])
    return budgeted_thresholds(scores, fractions, criterion)


def costs(net, input_size) -> Dict[str, object]:
    """Per-sample multiply-adds: what a sample leaving at exit k pays, and the full network."""
    s, h = stage_costs(net, input_size)
    return {"exit_costs": actual_exit_costs(net, input_size), "full_cost": sum(s) + h[-1]}


def contenders(net, thresholds, criterion: str):
    stages, exits = net.exit_stages()
    return {
        "infer": lambda x: run_early_exit(stages, exits, x, thresholds, criterion),
        "full": lambda x: run_full_network(stages, exits, x),
        "simulate": lambda x: run_all_exits(stages, exits, x),
    }


def one_at_a_time(fn):
    """Batch-1 inference: the samples of x one after the other."""
    def run(x):
        for i in range(x.shape[0]):
            fn(x[i: i + 1])
    return run


def race_stock(net, thresholds, criterion: str, x: torch.Tensor) -> Tuple[Dict[str, Callable[[], object]], dict]:
    """eexit against what a user would run instead, on batch x: the full network (every stage,
    last exit) as the reference model eager in contiguous and channels_last memory format and under
    ``torch.compile`` (channels_last), eexit's fused path in channels_last, and real early exit
    fused and under :func:`eexit.compile`. Returns (runs, info) with the compile warm-up seconds."""
    cl = torch.channels_last
    x_cl = x.contiguous(memory_format=cl)
    ref = copy.deepcopy(net).eval().set_backend("reference")
    ref_cl = copy.deepcopy(ref).to(memory_format=cl)
    fused_cl = copy.deepcopy(net).eval().set_backend("fused").to(memory_format=cl)
    compiled_full = torch.compile(lambda inp: run_full_network(*ref_cl.exit_stages(), inp))
    start = time.perf_counter()
    with torch.inference_mode():
        compiled_full(x_cl)
    info = {"torch_compile_s": time.perf_counter() - start}
    compiled = eexit.compile(copy.deepcopy(net).eval().to(memory_format=cl), example_input=x_cl)
    info["eexit_compile_s"] = compiled.compile_seconds
    runs = {
        "full ref": lambda: run_full_network(*ref.exit_stages(), x),
        "full ref channels_last": lambda: run_full_network(*ref_cl.exit_stages(), x_cl),
        "full torch.compile": lambda: compiled_full(x_cl),
        "full fused": lambda: run_full_network(*fused_cl.exit_stages(), x_cl),
        "infer fused": lambda: fused_cl.infer(x_cl, thresholds, criterion),
        "infer eexit.compile": lambda: compiled.infer(x_cl, thresholds, criterion),
    }
    return runs, info


def exit_fractions(out, n_exits: int) -> List[float]:
    """The fraction of the batch that left at each exit (an EarlyExitOutput)."""
    return [float((out.exit_index == k).mean(dtype=torch.float)) for k in range(n_exits)]


def record_race(benchmark, net, thresholds, criterion: str, x: torch.Tensor, cost: dict, rounds: int,
                group: str, model: str) -> None:
    """:func:`race_stock` on batch x as one interleaved pytest-benchmark entry (impl "race"), with
    the measured exit fractions, the warm-up seconds and the costs."""
    runs, info = race_stock(net, thresholds, criterion, x)
    with torch.inference_mode():
        fractions = exit_fractions(runs["infer fused"](), len(cost["exit_costs"]))
        benchmark.group = f"{group} batch={x.shape[0]} vs torch.compile"
        record_interleaved(benchmark, runs, rounds, str(x.device), impl="race", model=model, batch=x.shape[0],
                           exit_fractions=fractions, **info, **cost)


def geometric_thresholds(net, input_size, criterion: str, r: float = 0.5,
                         n_cal: int = 512) -> Tuple[List[float], List[float]]:
    """(thresholds, fractions): :func:`calibrate` on n_cal random inputs [n_cal, *input_size] (on the
    network's device) to geometric exit fractions (``geometric_exit_fractions(r, n_exits)``)."""
    fractions = geometric_exit_fractions(r, len(net.exit_stages()[1]))
    device = next(net.parameters()).device
    return calibrate(net, torch.randn(n_cal, *input_size, device=device), fractions, criterion), fractions
