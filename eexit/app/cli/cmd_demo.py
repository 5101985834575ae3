"""``eexit demo``: the whole job on real data: Fashion-MNIST when its files are there (Debian's
``dataset-fashion-mnist``; MNIST with ``--data mnist``), else scikit-learn's digits, which ship
offline inside the package.

Trains two early-exit models, calibrates thresholds on the validation split, and on the test split
reports, per operating point, accuracy, exits per stage, expected cost and the measured throughput
of real early exit vs the full network in both backends; writes checkpoints, a JSON of every figure
and a PNG plot.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from eexit import ops, timing
from eexit.app import checkpoint, data
from eexit.app.cli.common import (
    HelpFormatter,
    common_options,
    subject_from_checkpoint,
    table,
    thresholds_lines,
)
from eexit.app.data.idx import FASHION_MNIST_DIR, FILES, SOURCES, find_file
from eexit.app.devices import resolve_device
from eexit.app.evaluation import (
    calibrate_points,
    collect_logits,
    infer_accuracy,
    model_costs,
    model_inputs,
    operating_point,
    per_exit_accuracy,
    time_model,
)
from eexit.app.training import TrainConfig, train

HELP = "the main job on Fashion-MNIST (or digits): train, calibrate, evaluate, time, plot"
#: data set -> the demo's models, each with its training recipe and default epochs
MODELS: Dict[str, Tuple[Tuple[str, Dict[str, object]], ...]] = {
    "idx": (("b-lenet", dict(optimizer="adam", lr=2e-3, weight_decay=0.0, batch_size=128, epochs=3)),
            ("msdnet-mnist", dict(optimizer="adam", lr=2e-3, weight_decay=0.0, batch_size=128, epochs=1))),
    "digits": (("msdnet-digits", dict(optimizer="sgd", lr=0.1, weight_decay=1e-4, batch_size=64, epochs=12)),
               ("b-lenet", dict(optimizer="adam", lr=2e-3, weight_decay=0.0, batch_size=64, epochs=15))),
}
ACCURACY_DROP = 0.5  # points: the demo's operating point
TARGET_COST, TARGET_SPEEDUP = 0.6, 1.5


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", parents=[common_options()], help=HELP, formatter_class=HelpFormatter,
        description="Trains two early-exit models on --device, calibrates per-exit thresholds on the validation "
        "split (budgets from the first exit's cost to the full network's, and the cheapest point within 0.5 "
        "accuracy points of the full network), then on the test split prints a table per model: accuracy, exits "
        "per stage, expected cost (MFLOPs per sample, the official MSDNet counter's convention and what real early "
        "exit pays) and the measured throughput of model.infer vs the full network, fused vs reference backend, "
        "and each operating point's thresholds, one per exit as --thresholds of eval and bench takes them. "
        f"Data: Fashion-MNIST (60000 + 10000 real 28x28 grey images, 5000 of the training images held out for "
        f"validation) from --data-dir or {FASHION_MNIST_DIR} (Debian's dataset-fashion-mnist), with a B-LeNet and "
        "an MSDNet for 28x28 grey input (msdnet-mnist); MNIST the same from --data-dir; or scikit-learn's "
        "handwritten digits (1797 real 8x8 images shipped inside the package, split 60/20/20), with msdnet-digits "
        "(32x32 RGB) and the B-LeNet, which is where --data auto falls back when the Fashion-MNIST files are not "
        "found. Writes to --out-dir the checkpoints (<model>.pt, e.g. b-lenet.pt, msdnet-mnist.pt, or "
        "msdnet-digits.pt on digits), their thresholds files (b-lenet.thresholds.json, msdnet-digits.thresholds.json: "
        "named after the checkpoint without its extension, as eexit calibrate writes them), demo.json (every "
        "figure) and demo.png (accuracy vs cost and vs time). About 4 minutes on 2 idle CPU cores on "
        "Fashion-MNIST, 2 on digits.")
    p.add_argument("--data", choices=["auto", "fashion-mnist", "mnist", "digits"], default="auto",
                   help="data set; auto: Fashion-MNIST when its four IDX files are in --data-dir or the default "
                   "folder, else digits (with a note saying how to get the real data)")
    p.add_argument("--data-dir", type=Path, help=f"folder of the IDX files (default for Fashion-MNIST: "
                   f"{FASHION_MNIST_DIR})")
    p.add_argument("--out-dir", type=Path, default=Path("demo-output"), help="where the outputs go")
    p.add_argument("--msdnet-epochs", type=int, help="training epochs of the MSDNet (default 1 on Fashion-MNIST and "
                   "MNIST, 12 on digits)")
    p.add_argument("--lenet-epochs", type=int, help="training epochs of the B-LeNet (default 3 on Fashion-MNIST and "
                   "MNIST, 15 on digits)")
    p.add_argument("--train-size", type=int, help="train on this many samples of the training split (default: all; "
                   "for quick runs)")
    p.add_argument("--time-samples", type=int, default=1024,
                   help="the batch the throughput is measured on: the first this many test samples (at most all)")
    p.add_argument("--reps", type=int, default=5,
                   help="timed runs of each measurement (the median is reported; a warning when they vary over 1.5x)")
    p.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence", help="exit rule")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, the initialisation and training")
    p.set_defaults(run=run)


def choose_data(choice: str, data_dir: Optional[Path]) -> Tuple[str, Optional[str], Optional[str]]:
    """(data set, folder, note): ``auto`` takes Fashion-MNIST when all four IDX files are found in
    ``data_dir`` or the default folder, else digits with a note saying how to get the real data;
    a named IDX data set whose files are missing is an error (ValueError naming folder and file)."""
    if choice == "digits":
        return "digits", None, None
    name = "fashion-mnist" if choice == "auto" else choice
    try:
        folder = data.resolve_data_dir(name, data_dir)
        for split in FILES.values():
            for stem in split:
                find_file(folder, stem, name)
    except ValueError as err:
        if choice != "auto":
            raise
        return "digits", None, (f"Fashion-MNIST not found ({str(err).split('; ')[0]}): running on scikit-learn's "
                                f"digits instead; for the real data, {SOURCES[name].how_to_get}")
    return name, folder, None


def budgets(costs) -> List[float]:
    """Six budgets (fractions of the full network's cost) from the first exit's cost up to the full network."""
    lo = math.ceil(100 * costs.actual[0] / costs.full) / 100
    hi = min(1.0, costs.actual[-1] / costs.full)
    return sorted({round(lo + (hi - lo) * i / 5, 3) for i in range(6)})


def evaluate_model(name: str, ckpt_path: Path, trained: Dict[str, object], args: argparse.Namespace,
                   device: torch.device) -> Dict[str, object]:
    """Calibrates, evaluates and times one trained model (``trained``: what :func:`eexit.app.training.train`
    returned); returns its record for demo.json."""
    subject = subject_from_checkpoint(ckpt_path, device)
    model, splits, spec = subject.model, subject.splits, subject.spec
    val_logits, val_labels = collect_logits(model, splits.val, spec, device=device, desc=f"{name} validation")
    test_logits, test_labels = collect_logits(model, splits.test, spec, device=device, desc=f"{name} test")
    costs = model_costs(model, spec.shape)
    points = calibrate_points(val_logits, val_labels, costs, args.criterion, budgets=budgets(costs),
                              accuracy_drops=[ACCURACY_DROP])
    val_acc = per_exit_accuracy(val_logits, val_labels)
    checkpoint.save_thresholds(ckpt_path, name, args.criterion, val_acc[-1], costs, points)
    for p in points:
        p["test"] = operating_point(test_logits, test_labels, p["thresholds"], args.criterion, costs)
        p["test"]["infer_accuracy"] = infer_accuracy(model, splits.test, spec, p["thresholds"], args.criterion, 512,
                                                     device)
    n_time = min(args.time_samples, len(splits.test))
    x = next(model_inputs(splits.test, spec, n_time, device, indices=torch.arange(n_time)))[0]
    times = time_model(model, x, [p["thresholds"] for p in points], args.criterion, ("fused", "reference"), args.reps)
    for i, p in enumerate(points):
        p["timing"] = {b: dict(infer_ms=t["infer_ms"][i], speedup_vs_full=t["full_ms"] / t["infer_ms"][i])
                       for b, t in times.items()}
    spreads = {f"{what}, {b}": timing.Spread(**s) for b, t in times.items()
               for what, s in [("full network", t["spread"]["full"]), ("every exit", t["spread"]["simulate"])]
               + [(f"infer @ {p['name']}", s) for p, s in zip(points, t["spread"]["infer"])]}
    return dict(model=name, checkpoint=str(ckpt_path), epochs=trained["epoch"], history=trained["history"],
                costs=costs._asdict(), val_exit_accuracy=val_acc,
                test_exit_accuracy=per_exit_accuracy(test_logits, test_labels), samples_timed=len(x),
                timing={b: dict(full_ms=t["full_ms"], simulate_ms=t["simulate_ms"], spread=t["spread"])
                        for b, t in times.items()},
                points=points, operating_point=f"accuracy drop {ACCURACY_DROP:g}", noisy=timing.noisy_warning(spreads))


def mflops(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report(r: Dict[str, object]) -> str:
    """The per-model table of the demo."""
    n, tf, tr = r["samples_timed"], r["timing"]["fused"], r["timing"]["reference"]
    costs = r["costs"]
    lines = [f"{r['model']}: {r['epochs']} epochs; test accuracy per exit "
             + " ".join(f"{100 * a:.1f}" for a in r["test_exit_accuracy"])
             + f"; full network {costs['full'] / 1e6:.3f} MFLOPs, {n / tf['full_ms'] * 1e3:.0f} samples/s fused, "
             f"{n / tr['full_ms'] * 1e3:.0f} reference (all exits for every sample: "
             f"{n / tf['simulate_ms'] * 1e3:.0f} fused)"]
    rows = []
    for p in r["points"]:
        t = p["test"]
        rows.append([p["name"], f"{100 * t['accuracy']:.2f}", " ".join(str(c) for c in t["exit_counts"]),
                     mflops(t["official_cost_mflops"]), f"{t['cost_mflops']:.3f}", f"{100 * t['cost_fraction']:.0f}%",
                     f"{n / p['timing']['fused']['infer_ms'] * 1e3:.0f}",
                     f"{n / p['timing']['reference']['infer_ms'] * 1e3:.0f}",
                     f"{p['timing']['fused']['speedup_vs_full']:.2f}x"])
    lines.append(table(["operating point", "test acc %", "exits per stage", "MFLOPs official", "MFLOPs actual",
                        "of full", "infer/s fused", "infer/s ref", "fused vs full"], rows))
    lines.append(thresholds_lines([(p["name"], p["thresholds"]) for p in r["points"]]))
    return "\n".join(lines)


def target_check(r: Dict[str, object]) -> Dict[str, object]:
    """The demo's target at its operating point: accuracy within 0.5 points of the full network's, at
    <= 60% of its cost, fused infer >= 1.5x the full network's throughput."""
    p = next(p for p in r["points"] if p["name"] == r["operating_point"])
    full = r["test_exit_accuracy"][-1]
    return dict(model=r["model"], point=p["name"], accuracy=p["test"]["accuracy"], full_accuracy=full,
                cost_fraction=p["test"]["cost_fraction"], speedup=p["timing"]["fused"]["speedup_vs_full"],
                met=bool(p["test"]["accuracy"] >= full - ACCURACY_DROP / 100 - 1e-9
                         and p["test"]["cost_fraction"] <= TARGET_COST
                         and p["timing"]["fused"]["speedup_vs_full"] >= TARGET_SPEEDUP))


def run(args: argparse.Namespace) -> None:
    for name in ("msdnet_epochs", "lenet_epochs", "reps", "time_samples", "train_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    device = resolve_device(args.device)
    dataset, folder, note = choose_data(args.data, args.data_dir)
    if note:
        print(f"eexit demo: note: {note}", file=sys.stderr)
    title = SOURCES[dataset].title if dataset in SOURCES else "scikit-learn digits"
    start = time.perf_counter()
    print(f"eexit demo: {title}{f' from {folder}' if folder else ''}, {device}, {torch.get_num_threads()} threads, "
          f"extension {'yes' if ops.has_extension() else 'no (reference fallback)'}; outputs in {args.out_dir}/")
    results = []
    for name, recipe in MODELS["digits" if dataset == "digits" else "idx"]:
        recipe = dict(recipe)
        default_epochs = recipe.pop("epochs")
        epochs = getattr(args, "msdnet_epochs" if name.startswith("msdnet") else "lenet_epochs") or default_epochs
        path = args.out_dir / f"{name}.pt"
        t0 = time.perf_counter()
        trained = train(TrainConfig(model=name, data=dataset, data_dir=folder, out=str(path), epochs=epochs,
                                    seed=args.seed, split_seed=args.seed, train_size=args.train_size,
                                    device=str(device), overwrite=True, **recipe),
                        log=lambda msg: print(f"  [{name}] {msg}"))
        seconds = time.perf_counter() - t0
        r = evaluate_model(name, path, trained, args, device)
        r["train_seconds"] = seconds
        results.append(r)
        print()
        print(report(r))
        if r["noisy"]:
            print(f"eexit demo: warning: {name}: {r['noisy']}", file=sys.stderr)
        print()
    checks = [target_check(r) for r in results]
    for c in checks:
        print(f"target ({c['model']} at '{c['point']}'): test accuracy {100 * c['accuracy']:.2f}% vs full "
              f"{100 * c['full_accuracy']:.2f}%, cost {100 * c['cost_fraction']:.0f}% of the full network, fused "
              f"infer {c['speedup']:.2f}x its throughput: {'met' if c['met'] else 'MISSED'}")
    from eexit.app.plot import budget_plot

    budget_plot(results, args.out_dir / "demo.png", str(device))
    total = time.perf_counter() - start
    checkpoint.save_json(dict(data=dataset, data_dir=folder, device=str(device), threads=torch.get_num_threads(),
                              machine=platform.processor() or platform.machine(), torch=torch.__version__,
                              seed=args.seed, criterion=args.criterion, seconds=total, models=results,
                              targets=checks), args.out_dir / "demo.json")
    print(f"wrote {args.out_dir}/demo.json, {args.out_dir}/demo.png and the checkpoints; {total:.0f} s in all")
