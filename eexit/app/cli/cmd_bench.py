"""``eexit bench``: wall-clock of real early exit vs the full network vs the official-style simulation."""
from __future__ import annotations

import argparse
from typing import List

import torch

from eexit.app import checkpoint, zoo
from eexit.app.cli.common import (
    add_subject_options,
    common_options,
    fmt_threshold,
    load_subject,
    operating_points,
    table,
)
from eexit.app.devices import resolve_device
from eexit.app.evaluation import model_inputs, time_model

HELP = "wall-clock table: real early exit vs the full network vs every exit for every sample"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", parents=[common_options()], help=HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Times, on one batch, the full network (every stage, last exit only), the official-style "
        "simulation (every exit computed for every sample) and real early exit (model.infer) at each operating "
        "point, in the fused and the reference backends: median ms per batch, samples per second and the "
        "speedup over the full network. With --checkpoint the batch is taken from the test split and the "
        "operating points from <checkpoint>.thresholds.json unless --thresholds is given; with --model alone "
        "the network has random weights, the batch is random and --thresholds is required. Example: eexit "
        "bench --checkpoint runs/msdnet.pt --batch-size 256; eexit bench --model msdnet-imagenet-step4 "
        "--device cuda --batch-size 64 --thresholds 0.9")
    add_subject_options(p, checkpoint_required=False)
    p.add_argument("--num-classes", type=int, default=10, help="classes of a --model without checkpoint")
    p.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                   help="one threshold per exit, or one for all ('inf': nobody leaves at that exit)")
    p.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence",
                   help="exit rule of --thresholds")
    p.add_argument("--reps", type=int, default=10, help="timed runs of each (the median is reported)")
    p.add_argument("--backends", nargs="+", choices=["fused", "reference"], default=["fused", "reference"],
                   help="eexit backends to time")
    p.add_argument("--compile", action="store_true",
                   help="also time the model under eexit.compile (torch.compile per stage and exit, dynamic batch)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.reps < 1 or args.batch_size < 1:
        raise ValueError(f"--reps and --batch-size must be >= 1, got {args.reps} and {args.batch_size}")
    if args.checkpoint is not None:
        subject = load_subject(args)
        model, name, device = subject.model, subject.name, subject.device
        test = subject.splits.test
        idx = torch.arange(args.batch_size) % len(test)
        x = torch.cat([b for b, _ in model_inputs(test, subject.spec, args.batch_size, device, indices=idx)])
        source = f"{args.batch_size} test samples" + (" (repeated)" if args.batch_size > len(test) else "")
    else:
        if not args.model:
            raise ValueError("give --checkpoint, or --model for a network with random weights")
        device = resolve_device(args.device)
        name = args.model
        torch.manual_seed(0)
        model = zoo.build(name, args.num_classes).to(device).eval()
        x = torch.randn(args.batch_size, *zoo.entry(name).input_shape, device=device)
        source = f"a random batch of {args.batch_size}, random weights"
    n_exits = len(model.exit_stages()[1])
    points = [(p["name"], p["thresholds"], p["criterion"])
              for p in operating_points(args, n_exits, saved=args.thresholds is None)]
    if not points:
        raise ValueError("no operating point: pass --thresholds (or calibrate the checkpoint first)")
    if len({c for _, _, c in points}) > 1:
        raise ValueError("the operating points mix criteria; pass --thresholds with the file's criterion")
    with torch.inference_mode():
        fractions = [torch.bincount(model.infer(x, t, c).exit_index, minlength=n_exits).double().div(len(x)).tolist()
                     for _, t, c in points]
    backends = list(args.backends) + (["compiled"] if args.compile else [])
    times = time_model(model, x, [t for _, t, _ in points], points[0][2], backends, args.reps)
    print(f"{name} on {device}, {source}; median of {args.reps} runs")
    rows: List[List[str]] = []
    for backend, t in times.items():
        def row(what: str, ms: float, extra: str = "") -> None:
            rows.append([what, backend, f"{ms:.2f}", f"{len(x) / ms * 1e3:.0f}", f"{t['full_ms'] / ms:.2f}x", extra])

        row("full network", t["full_ms"])
        row("every exit (simulation)", t["simulate_ms"])
        for (pname, thr, _), ms, frac in zip(points, t["infer_ms"], fractions):
            row(f"infer @ {pname}", ms, " ".join(f"{100 * f:.0f}" for f in frac))
    print(table(["run", "backend", "ms/batch", "samples/s", "vs full", "exit % per stage"], rows))
    if "compiled" in times:
        print(f"compiled: warm-up (eexit.compile) {times['compiled']['compile_s']:.1f} s")
    print("thresholds: " + "; ".join(f"{n}: " + " ".join(fmt_threshold(v) for v in t[:-1]) for n, t, _ in points))
    if args.json:
        checkpoint.save_json(dict(model=name, device=str(device), batch_size=len(x), reps=args.reps,
                                  points=[dict(name=n, thresholds=t, criterion=c, exit_fractions=f)
                                          for (n, t, c), f in zip(points, fractions)], times=times), args.json)
        print(f"wrote {args.json}")
