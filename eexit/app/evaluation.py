"""Evaluation of early-exit models on a data split: every exit's logits once, then accuracy, exit
counts and cost at any thresholds from those cached logits; thresholds calibrated on them; the
accuracy and the wall-clock of real early exit."""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

import eexit
from eexit import calibrate, flops, reference
from eexit.app.data import batches
from eexit.app.data.transforms import to_model_input
from eexit.app.progress import bar
from eexit.nn import restoring_backends, set_backend
from eexit.runner import run_all_exits, run_full_network, simulate_early_exit
from eexit.timing import interleaved_spreads


class InputSpec(NamedTuple):
    """What the model takes: shape (C, H, W) and the per-channel normalisation of the data."""

    shape: Sequence[int]
    mean: Sequence[float]
    std: Sequence[float]


class Costs(NamedTuple):
    """Multiply-adds per sample: ``official[k]`` (the official MSDNet counter, cumulative at exit k;
    None for a model whose Linear layers are not exactly its exits' last layers, e.g. B-LeNet),
    ``actual[k]`` (what real early exit pays for a sample leaving at exit k: stages and heads 1..k)
    and ``full`` (the network without early exit: every stage and the last head only)."""

    official: Optional[List[float]]
    actual: List[float]
    full: float


def model_costs(model: nn.Module, shape: Sequence[int]) -> Costs:
    s_costs, h_costs = flops.stage_costs(model, tuple(shape))
    official = flops.exit_costs(model, tuple(shape))
    return Costs(official if len(official) == len(h_costs) else None, flops.actual_exit_costs(model, tuple(shape)),
                 sum(s_costs) + h_costs[-1])


def model_inputs(dataset, spec: InputSpec, batch_size: int, device: torch.device, workers: int = 0,
                 indices: torch.Tensor = None):
    """Yields (x float32 [B, *spec.shape] normalised on ``device``, labels int64 [B]) over the dataset
    (or ``indices`` of it) in order."""
    idx = torch.arange(len(dataset)) if indices is None else indices
    for x, y in batches(dataset, idx, batch_size, workers):
        yield to_model_input(x, spec.shape, spec.mean, spec.std).to(device), y


@torch.inference_mode()
def collect_logits(model: nn.Module, dataset, spec: InputSpec, batch_size: int = 256,
                   device: torch.device = torch.device("cpu"), workers: int = 0, desc: str = "evaluating"):
    """Every exit's logits for every sample: (float32 [K, N, C] on the CPU, labels int64 [N])."""
    model.eval()
    outs, labels = [], []
    steps = (len(dataset) + batch_size - 1) // batch_size
    for x, y in bar(model_inputs(dataset, spec, batch_size, device, workers), total=steps, desc=desc):
        outs.append(torch.stack([z.float().cpu() for z in model(x)]))
        labels.append(y)
    if not outs:
        raise ValueError(f"{desc}: the data split is empty")
    return torch.cat(outs, 1), torch.cat(labels)


def exit_scores(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Scores float32 [K, N] (max probability or entropy) of logits [K, N, C]."""
    return torch.stack([reference.gate_scores(z, criterion) for z in logits])


def per_exit_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> List[float]:
    """Accuracy of each exit's argmax if every sample left there."""
    return (logits.argmax(2) == labels).double().mean(1).tolist()


def operating_point(logits: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float], criterion: str,
                    costs: Costs) -> Dict[str, object]:
    """Accuracy, exit counts and mean costs (MFLOPs per sample, both conventions) when each sample
    takes the first exit whose score passes ``thresholds``: from cached logits [K, N, C]."""
    out = simulate_early_exit(list(logits), list(thresholds), criterion)
    counts = torch.bincount(out.exit_index, minlength=logits.shape[0]).tolist()
    n = max(len(labels), 1)
    actual = flops.expected_cost(counts, costs.actual)
    return dict(
        accuracy=float((out.pred == labels).double().mean()),
        exit_counts=counts,
        exit_fractions=[c / n for c in counts],
        cost_mflops=actual / 1e6,
        official_cost_mflops=None if costs.official is None else flops.expected_cost(counts, costs.official) / 1e6,
        cost_fraction=actual / costs.full,
    )


def sweep_grid(scores: torch.Tensor, criterion: str, max_combinations: int = 200_000) -> List[List[float]]:
    """Threshold values per exit (all but the last) for :func:`eexit.calibrate.threshold_sweep`: quantiles
    of that exit's scores plus "nobody leaves", as many as keep the combinations under the cap."""
    k = scores.shape[0] - 1
    n = max(2, min(64, int(max_combinations ** (1 / max(k, 1)))) - 1)
    q = torch.linspace(0, 1, n, dtype=torch.float64)
    return [sorted(set(torch.quantile(s.double(), q).tolist()) | {calibrate.never_exits(criterion)})
            for s in scores[:-1]]


#: how far the sum of --exit-fractions may be from 1
FRACTIONS_TOLERANCE = 1e-3


def check_exit_fractions(fractions: Sequence[float], n_exits: int) -> List[float]:
    """``fractions`` as floats when they are ``--exit-fractions`` of a model with ``n_exits`` exits:
    one per exit (the last one included: what no earlier exit takes leaves there), each in [0, 1],
    summing to 1 (within :data:`FRACTIONS_TOLERANCE`); ValueError saying what is wrong otherwise."""
    values = [float(f) for f in fractions]
    if len(values) != n_exits:
        raise ValueError(f"--exit-fractions: expected one per exit ({n_exits}, the last one included), "
                         f"got {len(values)}")
    if not all(0.0 <= f <= 1.0 for f in values):
        raise ValueError(f"--exit-fractions: each must be in [0, 1], got {' '.join(f'{f:g}' for f in values)}")
    if abs(sum(values) - 1.0) > FRACTIONS_TOLERANCE:
        raise ValueError(f"--exit-fractions: they must sum to 1 (every sample leaves somewhere), got "
                         f"{' '.join(f'{f:g}' for f in values)} = {sum(values):g}")
    return values


@torch.inference_mode()
def batch_thresholds(model: nn.Module, x: torch.Tensor, fractions: Sequence[float], criterion: str) -> List[float]:
    """Thresholds (one per exit) under which about ``fractions[k]`` of batch ``x`` leaves at exit k:
    :func:`eexit.calibrate.budgeted_thresholds` on the scores of every exit's logits of ``x``."""
    logits = model.eval()(x)
    fractions = check_exit_fractions(fractions, len(logits))
    return calibrate.budgeted_thresholds(exit_scores([z.float() for z in logits], criterion), fractions, criterion)


def budget_targets(costs: Costs, budgets: Sequence[float] = (),
                   budget_mflops: Sequence[float] = ()) -> List[Tuple[str, float]]:
    """(point name, mean multiply-adds per sample) of each budget (a fraction of the full network's
    cost, or MFLOPs); ValueError when one is outside what the exits allow."""
    lo, hi = costs.actual[0], costs.actual[-1]
    targets = [(f"budget {b:g}", b * costs.full, f"{b:g} x the full network") for b in budgets]
    targets += [(f"budget {m:g} MFLOPs", m * 1e6, f"{m:g} MFLOPs") for m in budget_mflops]
    for _, target, what in targets:
        if not lo <= target <= hi:
            raise ValueError(f"budget {what} = {target / 1e6:.4g} MFLOPs per sample is outside what the exits "
                             f"allow: [{lo / 1e6:.4g}, {hi / 1e6:.4g}] MFLOPs ({lo / costs.full:.3f} to "
                             f"{hi / costs.full:.3f} x the full network)")
    return [(name, target) for name, target, _ in targets]


def check_calibration(costs: Costs, budgets: Sequence[float] = (), budget_mflops: Sequence[float] = (),
                      exit_fractions: Optional[Sequence[float]] = None, accuracy_drops: Sequence[float] = ()) -> None:
    """What :func:`calibrate_points` is asked for, checked before any logits are computed: at least
    one point, budgets the exits allow, exit fractions one per exit summing to 1, drops >= 0."""
    if not (budgets or budget_mflops or exit_fractions is not None or accuracy_drops):
        raise ValueError("give at least one of --budget, --budget-mflops, --exit-fractions, --accuracy-drop")
    budget_targets(costs, budgets, budget_mflops)
    if exit_fractions is not None:
        check_exit_fractions(exit_fractions, len(costs.actual))
    for d in accuracy_drops:
        if not (d >= 0 and math.isfinite(d)):
            raise ValueError(f"--accuracy-drop must be >= 0 points, got {d}")


def calibrate_points(logits: torch.Tensor, labels: torch.Tensor, costs: Costs, criterion: str,
                     budgets: Sequence[float] = (), budget_mflops: Sequence[float] = (),
                     exit_fractions: Optional[Sequence[float]] = None,
                     accuracy_drops: Sequence[float] = ()) -> List[Dict[str, object]]:
    """Operating points from validation logits [K, N, C]: ``{name, method, thresholds, val}``, where
    ``thresholds`` has one value per exit (the last one unused) and ``val`` is :func:`operating_point`
    on that split. What is asked for is checked first (:func:`check_calibration`)."""
    check_calibration(costs, budgets, budget_mflops, exit_fractions, accuracy_drops)
    scores = exit_scores(logits, criterion)
    found = []
    for name, target in budget_targets(costs, budgets, budget_mflops):
        fractions = calibrate.fractions_for_cost(costs.actual, target)
        found.append((name, "budget", calibrate.budgeted_thresholds(scores, fractions, criterion)))
    if exit_fractions is not None:
        found.append(("exit fractions", "fractions",
                      calibrate.budgeted_thresholds(scores, check_exit_fractions(exit_fractions, scores.shape[0]),
                                                    criterion)))
    if accuracy_drops:
        correct = logits.argmax(2) == labels
        front = calibrate.threshold_sweep(scores, correct, costs.actual, sweep_grid(scores, criterion), criterion,
                                          progress=lambda it: bar(it, desc="threshold sweep"))
        full = float(correct[-1].double().mean())
        for d in accuracy_drops:
            found.append((f"accuracy drop {d:g}", "pareto",
                          list(calibrate.pick(front, d / 100, baseline=full).thresholds)))
    return [dict(name=name, method=method, thresholds=thr,
                 val=operating_point(logits, labels, thr, criterion, costs)) for name, method, thr in found]


@torch.inference_mode()
def infer_accuracy(model: nn.Module, dataset, spec: InputSpec, thresholds: Sequence[float], criterion: str,
                   batch_size: int, device: torch.device = torch.device("cpu")) -> float:
    """Accuracy of real early exit (``model.infer``) over a whole split."""
    right = total = 0
    steps = (len(dataset) + batch_size - 1) // batch_size
    for x, y in bar(model_inputs(dataset, spec, batch_size, device), total=steps, desc="infer"):
        pred = model.infer(x, thresholds, criterion).pred.cpu()
        right += int((pred == y).sum())
        total += len(y)
    return right / total


@torch.inference_mode()
def time_model(model: nn.Module, x: torch.Tensor, thresholds: Sequence[Sequence[float]], criterion: str,
               backends: Sequence[str] = ("fused", "reference"), reps: int = 7) -> Dict[str, Dict[str, object]]:
    """Median ms per batch of the full network (every stage, last exit), the official-style
    simulation (every exit for every sample) and real early exit at each of ``thresholds``, per
    backend (an eexit backend, or "compiled": :func:`eexit.compile`, whose warm-up seconds are
    reported as ``compile_s``); the runs of one backend are interleaved so that machine drift hits
    them alike.

    Returns ``{backend: {"full_ms": m, "simulate_ms": m, "infer_ms": [m per thresholds], "spread":
    {"full": s, "simulate": s, "infer": [s per thresholds]}}}``, each ``s`` the fastest, median and
    slowest ms of the ``reps`` runs (:class:`eexit.timing.Spread` as a dict: min_ms, median_ms,
    max_ms, reps). The model's settings, and whether it runs compiled, are restored afterwards.
    """
    model.eval()
    result = {}
    compiled_parts = model.compiled_parts
    try:
        with restoring_backends(model):
            for backend in backends:
                extra = {}
                if backend == "compiled":
                    eexit.compile(model, example_input=x)
                    extra["compile_s"] = model.compile_seconds
                else:
                    set_backend(eexit.uncompile(model), backend)
                stages, exits = model.running_stages()
                runs = {"full_ms": lambda: run_full_network(stages, exits, x),
                        "simulate_ms": lambda: run_all_exits(stages, exits, x)}
                runs.update({i: (lambda t=t: model.infer(x, t, criterion)) for i, t in enumerate(thresholds)})
                spreads = interleaved_spreads(runs, reps, x.device,
                                              progress=lambda it: bar(it, desc=f"timing ({backend})"))
                infer = range(len(thresholds))
                result[backend] = dict(
                    full_ms=spreads["full_ms"].median_ms, simulate_ms=spreads["simulate_ms"].median_ms,
                    infer_ms=[spreads[i].median_ms for i in infer],
                    spread=dict(full=spreads["full_ms"]._asdict(), simulate=spreads["simulate_ms"]._asdict(),
                                infer=[spreads[i]._asdict() for i in infer]), **extra)
    finally:
        model.compiled_parts = compiled_parts
    return result
