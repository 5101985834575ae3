"""Shared set-up of the early-exit benchmarks: thresholds calibrated to target exit fractions,
costs, and the three contenders (real early exit, full network, all-exits simulation)."""
from typing import Dict, List, Sequence

import torch

from eexit.calibrate import budgeted_thresholds
from eexit.flops import actual_exit_costs, stage_costs
from eexit.reference import gate_scores
from eexit.runner import run_all_exits, run_early_exit, run_full_network


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
