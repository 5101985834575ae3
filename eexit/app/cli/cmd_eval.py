"""``eexit eval``: accuracy and cost per exit, and at calibrated thresholds with real early exit."""
from __future__ import annotations

import argparse

import eexit
from eexit.app import checkpoint
from eexit.app.cli.common import (
    THRESHOLDS_FILE,
    HelpFormatter,
    add_subject_options,
    add_thresholds_options,
    common_options,
    load_subject,
    n_exits,
    operating_points,
    points_table,
    table,
)
from eexit.app.evaluation import (
    collect_logits,
    infer_accuracy,
    model_costs,
    model_inputs,
    operating_point,
    per_exit_accuracy,
)

HELP = "accuracy and cost per exit and at the calibrated thresholds"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", parents=[common_options()], help=HELP, formatter_class=HelpFormatter,
        description="Evaluates a checkpoint on a data split: each exit's accuracy and cost (MFLOPs per sample, "
        "the official MSDNet counter's cumulative figure and what real early exit pays), then, at every "
        f"operating point of {THRESHOLDS_FILE}, written by eexit calibrate, and at --thresholds, the "
        "accuracy of real early exit (model.infer), the share of samples leaving at each exit, the mean "
        "cost and the thresholds, one per exit as --thresholds takes them. Thresholds are checked before "
        "anything is evaluated. Example: eexit eval --checkpoint runs/msdnet.pt --split test; with thresholds "
        "(five for its five exits): eexit eval --checkpoint runs/msdnet.pt --thresholds 0.9 0.9 0.8 0.8 0; for a "
        "checkpoint of the official code: eexit eval --official --checkpoint model_best.pth.tar --model "
        "msdnet-cifar-anytime --data cifar100 --data-dir ~/data")
    add_subject_options(p)
    p.add_argument("--split", choices=["test", "val"], default="test", help="data split to evaluate")
    add_thresholds_options(p, "an extra operating point (the calibrated points keep their own criterion)")
    p.add_argument("--compile", action="store_true",
                   help="run the model through eexit.compile (torch.compile per stage and exit, dynamic batch)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    subject = load_subject(args)
    points = operating_points(args, n_exits(subject.model), saved=True)  # before any evaluation work
    dataset = getattr(subject.splits, args.split)
    if args.compile:
        first, _ = next(iter(model_inputs(dataset, subject.spec, args.batch_size, subject.device)))
        eexit.compile(subject.model, example_input=first)
        print(f"compiled (eexit.compile) in {subject.model.compile_seconds:.1f} s")
    logits, labels = collect_logits(subject.model, dataset, subject.spec, args.batch_size, subject.device,
                                    desc=args.split)
    costs = model_costs(subject.model, subject.spec.shape)
    acc = per_exit_accuracy(logits, labels)
    print(f"{subject.name} on the {args.split} split ({len(labels)} samples); "
          f"full network {100 * acc[-1]:.2f}% at {costs.full / 1e6:.3f} MFLOPs per sample")
    print(table(["exit", "accuracy %", "MFLOPs (official)", "MFLOPs (actual)"],
                [[str(k), f"{100 * a:.2f}", "n/a" if costs.official is None else f"{costs.official[k] / 1e6:.3f}",
                  f"{c / 1e6:.3f}"] for k, (a, c) in enumerate(zip(acc, costs.actual))]))
    for p in points:
        p[args.split] = operating_point(logits, labels, p["thresholds"], p["criterion"], costs)
        p[args.split]["infer_accuracy"] = infer_accuracy(subject.model, dataset, subject.spec, p["thresholds"],
                                                         p["criterion"], args.batch_size, subject.device)
    if points:
        print()
        print(points_table(points, args.split))
        worst = max(abs(p[args.split]["infer_accuracy"] - p[args.split]["accuracy"]) for p in points)
        print(f"real early exit (model.infer) vs the simulation from every exit's logits: accuracy differs by "
              f"at most {100 * worst:.2f} points")
    else:
        print(f"\nno operating points: run eexit calibrate (writes {checkpoint.thresholds_path(args.checkpoint)}) "
              "or pass --thresholds")
    if args.json:
        checkpoint.save_json(dict(model=subject.name, split=args.split, samples=len(labels), exit_accuracy=acc,
                                  costs=costs._asdict(), points=points), args.json)
        print(f"wrote {args.json}")
