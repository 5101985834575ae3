"""``eexit calibrate``: thresholds from the validation split, written next to the checkpoint."""
from __future__ import annotations

import argparse
import math
from typing import Dict, List, Optional, Sequence

import torch

from eexit import calibrate as cal
from eexit import checkpoint
from eexit.cli.common import add_subject_options, common_options, fmt_threshold, load_subject, table
from eexit.evaluate import Costs, collect_logits, exit_scores, model_costs, operating_point, per_exit_accuracy

HELP = "thresholds for a compute budget or an accuracy drop, from the validation split"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate", parents=[common_options()], help=HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Runs the model once on the validation split (every exit, every sample), then chooses "
        "per-exit thresholds: for each --budget (or --budget-mflops) MSDNet's budgeted-batch rule (geometric "
        "exit fractions whose mean cost is the budget, thresholds at those quantiles of the scores); for "
        "--exit-fractions those fractions directly; for each --accuracy-drop the cheapest point of the "
        "accuracy-vs-cost Pareto front (a threshold sweep) within that many points of the full network's "
        "validation accuracy. Writes them to <checkpoint>.thresholds.json (replacing its points) and prints "
        "each point's validation accuracy, exit fractions and cost. Example: eexit calibrate --checkpoint "
        "runs/msdnet.pt --budget 0.3 0.5 --accuracy-drop 0.5")
    add_subject_options(p)
    g = p.add_argument_group("operating points (at least one)")
    g.add_argument("--budget", type=float, nargs="+", default=[], metavar="FRACTION",
                   help="mean cost per sample as a fraction of the full network's (every stage, last exit)")
    g.add_argument("--budget-mflops", type=float, nargs="+", default=[], metavar="MFLOPS",
                   help="mean cost per sample in millions of multiply-adds")
    g.add_argument("--exit-fractions", type=float, nargs="+", metavar="F",
                   help="fraction of the samples that should leave at each exit, one per exit")
    g.add_argument("--accuracy-drop", type=float, nargs="+", default=[], metavar="POINTS",
                   help="largest accepted accuracy loss against the full network, in percentage points")
    p.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence",
                   help="exit rule: max softmax probability >= threshold, or entropy (nats) < threshold")
    p.set_defaults(run=run)


def sweep_grid(scores: torch.Tensor, criterion: str, max_combinations: int = 200_000) -> List[List[float]]:
    """Threshold values per exit (all but the last) for :func:`eexit.calibrate.threshold_sweep`: quantiles
    of that exit's scores plus "nobody leaves", as many as keep the combinations under the cap."""
    k = scores.shape[0] - 1
    n = max(2, min(64, int(max_combinations ** (1 / max(k, 1)))) - 1)
    q = torch.linspace(0, 1, n, dtype=torch.float64)
    return [sorted(set(torch.quantile(s.double(), q).tolist()) | {cal.never_exits(criterion)}) for s in scores[:-1]]


def calibrate_points(logits: torch.Tensor, labels: torch.Tensor, costs: Costs, criterion: str,
                     budgets: Sequence[float] = (), budget_mflops: Sequence[float] = (),
                     exit_fractions: Optional[Sequence[float]] = None,
                     accuracy_drops: Sequence[float] = ()) -> List[Dict[str, object]]:
    """Operating points from validation logits [K, N, C]: ``{name, method, thresholds, val}``, where
    ``val`` is :func:`eexit.evaluate.operating_point` on that split."""
    scores = exit_scores(logits, criterion)
    found = []
    lo, hi = costs.actual[0], costs.actual[-1]
    targets = [(f"budget {b:g}", b * costs.full, f"{b:g} x the full network") for b in budgets]
    targets += [(f"budget {m:g} MFLOPs", m * 1e6, f"{m:g} MFLOPs") for m in budget_mflops]
    for name, target, what in targets:
        if not lo <= target <= hi:
            raise ValueError(f"budget {what} = {target / 1e6:.4g} MFLOPs per sample is outside what the exits "
                             f"allow: [{lo / 1e6:.4g}, {hi / 1e6:.4g}] MFLOPs ({lo / costs.full:.3f} to "
                             f"{hi / costs.full:.3f} x the full network)")
        fractions = cal.fractions_for_cost(costs.actual, target)
        found.append((name, "budget", cal.budgeted_thresholds(scores, fractions, criterion)))
    if exit_fractions is not None:
        if len(exit_fractions) != scores.shape[0]:
            raise ValueError(f"--exit-fractions: expected one per exit ({scores.shape[0]}), got {len(exit_fractions)}")
        found.append(("exit fractions", "fractions", cal.budgeted_thresholds(scores, list(exit_fractions), criterion)))
    if accuracy_drops:
        correct = logits.argmax(2) == labels
        front = cal.threshold_sweep(scores, correct, costs.actual, sweep_grid(scores, criterion), criterion)
        full = float(correct[-1].double().mean())
        for d in accuracy_drops:
            if not (d >= 0 and math.isfinite(d)):
                raise ValueError(f"--accuracy-drop must be >= 0 points, got {d}")
            found.append((f"accuracy drop {d:g}", "pareto", list(cal.pick(front, d / 100, baseline=full).thresholds)))
    if not found:
        raise ValueError("give at least one of --budget, --budget-mflops, --exit-fractions, --accuracy-drop")
    return [dict(name=name, method=method, thresholds=thr,
                 val=operating_point(logits, labels, thr, criterion, costs)) for name, method, thr in found]


def points_table(points: List[Dict[str, object]], split: str, costs: Costs) -> str:
    rows = []
    for p in points:
        m = p[split]
        rows.append([p["name"], " ".join(fmt_threshold(t) for t in p["thresholds"][:-1]),
                     f"{100 * m['accuracy']:.2f}", " ".join(f"{100 * f:.0f}" for f in m["exit_fractions"]),
                     f"{m['cost_mflops']:.3f}", f"{100 * m['cost_fraction']:.0f}%"])
    return table(["point", "thresholds", f"{split} acc %", "exit % per stage", "MFLOPs", "of full"], rows)


def run(args: argparse.Namespace) -> None:
    subject = load_subject(args)
    logits, labels = collect_logits(subject.model, subject.splits.val, subject.spec, args.batch_size,
                                    subject.device, desc="validation")
    costs = model_costs(subject.model, subject.spec.shape)
    points = calibrate_points(logits, labels, costs, args.criterion, args.budget, args.budget_mflops,
                              args.exit_fractions, args.accuracy_drop)
    out = checkpoint.save_thresholds(args.checkpoint, subject.name, args.criterion,
                                     per_exit_accuracy(logits, labels)[-1], costs, points)
    print(f"{subject.name}: {len(labels)} validation samples, full network {costs.full / 1e6:.3f} MFLOPs per sample")
    print(points_table(points, "val", costs))
    print(f"wrote {out}")
