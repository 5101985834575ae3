"""``eexit bench``: wall-clock of real early exit vs the full network vs the official-style simulation."""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List

import torch

from eexit import timing
from eexit.app import checkpoint, zoo
from eexit.app.cli.common import (
    THRESHOLDS_FILE,
    HelpFormatter,
    add_subject_options,
    add_thresholds_options,
    common_options,
    load_subject,
    n_exits,
    operating_points,
    table,
    thresholds_lines,
)
from eexit.app.devices import resolve_device
from eexit.app.evaluation import batch_thresholds, check_exit_fractions, model_inputs, time_model

HELP = "wall-clock table: real early exit vs the full network vs every exit for every sample"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", parents=[common_options()], help=HELP, formatter_class=HelpFormatter,
        description="Times, on one batch, the full network (every stage, last exit only), the official-style "
        "simulation (every exit computed for every sample) and real early exit (model.infer) at each operating "
        "point, in the fused and the reference backends: the fastest, median and slowest ms per batch of --reps "
        "interleaved runs (with a warning when the slowest took over 1.5x the fastest: a busy machine), "
        "samples per second and the speedup over the full network at the median, and torch's thread count. "
        "With --checkpoint the batch is taken from the test split; with --model alone the network has random "
        "weights and the batch is random. Operating points: --thresholds, and --exit-fractions (thresholds "
        f"calibrated on the timed batch itself, so that it needs no trained model); without either, those of "
        f"{THRESHOLDS_FILE}. Examples: eexit bench --checkpoint runs/msdnet.pt --batch-size 256; eexit bench "
        "--model msdnet-imagenet-step4 --device cuda --batch-size 64 --exit-fractions 0.4 0.3 0.2 0.05 0.05; "
        "eexit bench --model resnet18-exits --thresholds 0.9 0.9 0.9 0")
    add_subject_options(p, checkpoint_required=False, batch="samples in the timed batch")
    p.add_argument("--num-classes", type=int, default=10, help="classes of a --model without checkpoint")
    add_thresholds_options(p, "an operating point")
    p.add_argument("--exit-fractions", type=float, nargs="+", metavar="F",
                   help="an operating point whose thresholds send about these fractions of the timed batch to "
                   "each exit, calibrated on that batch (eexit.calibrate.budgeted_thresholds): one per exit, "
                   "the last exit's included, summing to 1 (e.g. 0.4 0.3 0.2 0.1 for four exits); with "
                   "--criterion")
    p.add_argument("--reps", type=int, default=10, help="timed runs of each (fastest, median and slowest reported)")
    p.add_argument("--backends", nargs="+", choices=["fused", "reference"], default=["fused", "reference"],
                   help="eexit backends to time")
    p.add_argument("--compile", action="store_true",
                   help="also time the model under eexit.compile (torch.compile per stage and exit, dynamic batch)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    p.set_defaults(run=run)


def fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 1 else f"{ms:.2f}"


def run(args: argparse.Namespace) -> None:
    if args.reps < 1 or args.batch_size < 1:
        raise ValueError(f"--reps and --batch-size must be >= 1, got {args.reps} and {args.batch_size}")
    if args.checkpoint is not None:
        subject = load_subject(args)
        model, name, device = subject.model, subject.name, subject.device
    else:
        if not args.model:
            raise ValueError("give --checkpoint, or --model for a network with random weights")
        if args.official or args.data or args.data_dir:
            raise ValueError("--official, --data and --data-dir go with --checkpoint; --model alone times a network "
                             "with random weights on a random batch")
        device = resolve_device(args.device)
        name = args.model
        torch.manual_seed(0)
        model = zoo.build(name, args.num_classes).to(device).eval()
    k = n_exits(model)
    fractions = None if args.exit_fractions is None else check_exit_fractions(args.exit_fractions, k)
    points = [(p["name"], p["thresholds"], p["criterion"])
              for p in operating_points(args, k, saved=args.thresholds is None and fractions is None)]
    if not points and fractions is None:
        raise ValueError("no operating point: pass --thresholds or --exit-fractions (or calibrate the checkpoint "
                         "first)")
    if len({c for _, _, c in points} | ({args.criterion} if fractions is not None else set())) > 1:
        raise ValueError("the operating points mix criteria; pass --thresholds with the file's criterion")
    if args.checkpoint is not None:
        test = subject.splits.test
        idx = torch.arange(args.batch_size) % len(test)
        x = torch.cat([b for b, _ in model_inputs(test, subject.spec, args.batch_size, device, indices=idx)])
        source = f"{args.batch_size} test samples" + (" (repeated)" if args.batch_size > len(test) else "")
    else:
        x = torch.randn(args.batch_size, *zoo.entry(name).input_shape, device=device)
        source = f"a random batch of {args.batch_size}, random weights"
    requested = {}
    if fractions is not None:  # thresholds calibrated on the timed batch itself
        requested["exit fractions " + " ".join(f"{f:g}" for f in fractions)] = fractions
        points.append((next(iter(requested)), batch_thresholds(model, x, fractions, args.criterion), args.criterion))
    with torch.inference_mode():
        measured = [torch.bincount(model.infer(x, t, c).exit_index, minlength=k).double().div(len(x)).tolist()
                    for _, t, c in points]
    backends = list(args.backends) + (["compiled"] if args.compile else [])
    times = time_model(model, x, [t for _, t, _ in points], points[0][2], backends, args.reps)
    threads = torch.get_num_threads()
    print(f"{name} on {device}, {threads} torch thread{'s' if threads != 1 else ''}, {source}; {args.reps} "
          "interleaved runs of each: fastest, median and slowest ms per batch (samples/s and speedup at the median)")
    rows: List[List[str]] = []
    spreads: Dict[str, timing.Spread] = {}
    for backend, t in times.items():
        def row(what: str, s: Dict[str, float], extra: str = "") -> None:
            spreads[f"{what}, {backend}"] = timing.Spread(**s)
            rows.append([what, backend, fmt_ms(s["min_ms"]), fmt_ms(s["median_ms"]), fmt_ms(s["max_ms"]),
                         f"{len(x) / s['median_ms'] * 1e3:.0f}", f"{t['full_ms'] / s['median_ms']:.2f}x", extra])

        row("full network", t["spread"]["full"])
        row("every exit (simulation)", t["spread"]["simulate"])
        for (pname, _, _), s, frac in zip(points, t["spread"]["infer"], measured):
            row(f"infer @ {pname}", s, " ".join(f"{100 * f:.0f}" for f in frac))
    print(table(["run", "backend", "min ms", "median ms", "max ms", "samples/s", "vs full", "exit % per stage"],
                rows))
    if "compiled" in times:
        print(f"compiled: warm-up (eexit.compile) {times['compiled']['compile_s']:.1f} s")
    print(thresholds_lines([(n, t) for n, t, _ in points]))
    warning = timing.noisy_warning(spreads)
    if warning:
        print(f"eexit bench: warning: {warning}", file=sys.stderr)
    if args.json:
        checkpoint.save_json(dict(model=name, device=str(device), threads=threads, batch_size=len(x), reps=args.reps,
                                  points=[dict(name=n, thresholds=t, criterion=c, exit_fractions=f,
                                               **({"requested_exit_fractions": requested[n]} if n in requested
                                                  else {}))
                                          for (n, t, c), f in zip(points, measured)],
                                  times=times, noisy=warning), args.json)
        print(f"wrote {args.json}")
