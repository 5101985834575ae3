"""``eexit calibrate``: thresholds from the validation split, written next to the checkpoint."""
from __future__ import annotations

import argparse

from eexit.app import checkpoint
from eexit.app.cli.common import (
    THRESHOLDS_FILE,
    HelpFormatter,
    add_subject_options,
    common_options,
    load_subject,
    points_table,
)
from eexit.app.evaluation import (
    calibrate_points,
    check_calibration,
    collect_logits,
    model_costs,
    per_exit_accuracy,
)

HELP = "thresholds for a compute budget or an accuracy drop, from the validation split"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate", parents=[common_options()], help=HELP, formatter_class=HelpFormatter,
        description="Runs the model once on the validation split (every exit, every sample), then chooses "
        "per-exit thresholds: for each --budget (or --budget-mflops) MSDNet's budgeted-batch rule (geometric "
        "exit fractions whose mean cost is the budget, thresholds at those quantiles of the scores); for "
        "--exit-fractions those fractions directly; for each --accuracy-drop the cheapest point of the "
        "accuracy-vs-cost Pareto front (a threshold sweep) within that many points of the full network's "
        f"validation accuracy. Writes them to {THRESHOLDS_FILE}, replacing its points, one threshold per "
        "exit (the last exit takes everyone left: its value is unused, but written so that every tool "
        "reads the same list), and prints each point's thresholds (as --thresholds of eval and bench takes "
        "them), validation accuracy, exit fractions and cost. Example: eexit calibrate --checkpoint "
        "runs/msdnet.pt --budget 0.3 0.5 --accuracy-drop 0.5")
    add_subject_options(p)
    g = p.add_argument_group("operating points (at least one)")
    g.add_argument("--budget", type=float, nargs="+", default=[], metavar="FRACTION",
                   help="mean cost per sample as a fraction of the full network's (every stage, last exit)")
    g.add_argument("--budget-mflops", type=float, nargs="+", default=[], metavar="MFLOPS",
                   help="mean cost per sample in millions of multiply-adds")
    g.add_argument("--exit-fractions", type=float, nargs="+", metavar="F",
                   help="fraction of the samples that should leave at each exit: one per exit, the last "
                   "exit's included, summing to 1 (e.g. 0.4 0.3 0.2 0.1 for four exits)")
    g.add_argument("--accuracy-drop", type=float, nargs="+", default=[], metavar="POINTS",
                   help="largest accepted accuracy loss against the full network, in percentage points")
    p.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence",
                   help="exit rule: max softmax probability >= threshold, or entropy (nats) < threshold")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    subject = load_subject(args)
    costs = model_costs(subject.model, subject.spec.shape)
    # what is asked for is checked before the validation pass
    check_calibration(costs, args.budget, args.budget_mflops, args.exit_fractions, args.accuracy_drop)
    logits, labels = collect_logits(subject.model, subject.splits.val, subject.spec, args.batch_size,
                                    subject.device, desc="validation")
    points = calibrate_points(logits, labels, costs, args.criterion, args.budget, args.budget_mflops,
                              args.exit_fractions, args.accuracy_drop)
    out = checkpoint.save_thresholds(args.checkpoint, subject.name, args.criterion,
                                     per_exit_accuracy(logits, labels)[-1], costs, points)
    print(f"{subject.name}: {len(labels)} validation samples, full network {costs.full / 1e6:.3f} MFLOPs per sample")
    print(points_table(points, "val"))
    print(f"wrote {out}")
