"""BranchyNet's Table 1 for B-LeNet on trained weights (``python benchmarks/branchynet_table.py``).

Trains B-LeNet (seeded, a few epochs, into a temporary folder: no checkpoint enters the repository)
or reads ``--checkpoint``; chooses entropy thresholds for the branch on the validation split (the
largest T whose real early exit stays within 0.5 points of the final exit, plus the T that send
about 60 % and 90 % out at the branch); then on the test split reports per T the exit share at the
branch, each exit's accuracy, the accuracy of ``model.infer``, the FLOPs cost ratio and CPU time per
sample of the full network vs ``infer`` at batch 256 and batch 1 (interleaved rounds, medians), and
where the time goes (each stage and exit timed apart), next to the paper's MNIST row.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from eexit import calibrate, flops
from eexit.app.cli.common import subject_from_checkpoint
from eexit.app.evaluation import (
    collect_logits,
    infer_accuracy,
    model_costs,
    model_inputs,
    operating_point,
    per_exit_accuracy,
)
from eexit.app.training import TrainConfig, train
from eexit.reference import gate_scores
from eexit.runner import run_full_network
from eexit.timing import interleaved_medians

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import cpu_name  # noqa: E402  (benchmarks/reporting.py)

ACCURACY_DROP = 0.5  # points
TARGET_EARLY, TARGET_SPEEDUP = 0.60, 0.85  # >= 60 % early exits; speedup >= 0.85 x the cost ratio
#: Teerapittayanon et al., "BranchyNet", ICPR 2016, Table 1, MNIST rows (as recalled: check the paper)
PAPER = dict(baseline_accuracy=99.20, accuracy=99.25, threshold=0.025, exit_percent=94.3,
             cpu_ms=(3.37, 0.62), gpu_ms=(1.58, 0.34))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["fashion-mnist", "mnist"], default="fashion-mnist")
    p.add_argument("--data-dir", help="folder of the four IDX files (default for Fashion-MNIST: Debian's)")
    p.add_argument("--checkpoint", type=Path, help="an eexit checkpoint of b-lenet (default: train one)")
    p.add_argument("--work-dir", type=Path, help="where to train the checkpoint (default: a temporary folder; "
                   "keep it out of the repository)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (Adam 2e-3, batch 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, help="train on this many samples (quick runs)")
    p.add_argument("--reps", type=int, default=15, help="interleaved timing rounds (medians)")
    p.add_argument("--batch1-samples", type=int, default=256, help="test samples timed one at a time")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    p.add_argument("--json", type=Path, help="write every figure here")
    return p.parse_args(argv)


def get_model(args: argparse.Namespace, workdir: Path):
    """(subject, recipe text): the checkpoint's model and splits, training one first without --checkpoint."""
    if args.checkpoint is not None:
        return subject_from_checkpoint(args.checkpoint, torch.device("cpu"), args.data_dir), str(args.checkpoint)
    path = workdir / "b-lenet.pt"
    start = time.perf_counter()
    train(TrainConfig(model="b-lenet", data=args.data, data_dir=args.data_dir, out=str(path), epochs=args.epochs,
                      optimizer="adam", lr=2e-3, weight_decay=0.0, batch_size=128, seed=args.seed,
                      split_seed=args.seed, train_size=args.train_size, overwrite=True), log=lambda _: None)
    recipe = (f"trained here: {args.epochs} epochs, Adam lr 2e-3, batch 128, seed {args.seed}"
              f"{f', {args.train_size} training samples' if args.train_size else ''}, "
              f"{time.perf_counter() - start:.0f} s")
    return subject_from_checkpoint(path, torch.device("cpu")), recipe


def choose_thresholds(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Entropy thresholds for the branch from validation logits [2, N, C]: the largest T whose early
    exit accuracy is within ACCURACY_DROP points of the final exit's ("chosen"), and the T sending
    about 60 % and 90 % out at the branch (entropy < T exits, the gate's rule)."""
    scores = torch.stack([gate_scores(z, "entropy") for z in logits])
    correct = logits.argmax(2) == labels
    order = scores[0].sort().values
    candidates = torch.cat([order, order[-1:] + 1]).unique().tolist()  # each sample's entropy, then above all
    # the cheapest point within the drop = the largest T: eexit's sweep over every candidate (costs only order)
    front = calibrate.threshold_sweep(scores, correct, [1.0, 2.0], [candidates], "entropy", chunk=1024)
    best = calibrate.pick(front, ACCURACY_DROP / 100, baseline=correct[1].double().mean().item()).thresholds[0]
    n = len(order)
    return {"chosen": best, "60% at branch": order[int(0.6 * n)].item(), "90% at branch": order[int(0.9 * n)].item()}


def time_per_sample(model, stages, exits, xs: torch.Tensor, thresholds: List[float], reps: int) -> Dict[str, float]:
    """ms per sample of the full network and of infer: xs [n, C, H, W] as one batch, or xs
    [n, 1, C, H, W] as n batches of one."""
    if xs.dim() == 5:
        runs = {"full": lambda: [run_full_network(stages, exits, x) for x in xs],
                "infer": lambda: [model.infer(x, thresholds, "entropy") for x in xs]}
    else:
        runs = {"full": lambda: run_full_network(stages, exits, xs),
                "infer": lambda: model.infer(xs, thresholds, "entropy")}
    return {k: v / len(xs) for k, v in interleaved_medians(runs, reps, xs.device).items()}


def time_parts(stages, exits, x: torch.Tensor, reps: int) -> Dict[str, float]:
    """Median ms of stage 0, exit 0, stage 1, exit 1, each on its real input x / stage 0's output."""
    h0 = stages[0](x)
    h1 = stages[1](h0)
    runs = {"stage 0": lambda: stages[0](x), "exit 0 (branch)": lambda: exits[0](h0),
            "stage 1": lambda: stages[1](h0), "exit 1": lambda: exits[1](h1)}
    return interleaved_medians(runs, reps, x.device)


@torch.inference_mode()
def measure(args: argparse.Namespace, subject, recipe: str) -> Dict[str, object]:
    if subject.name != "b-lenet":
        raise ValueError(f"{subject.path} holds model {subject.name!r}; this table is for b-lenet")
    model, splits, spec = subject.model.eval(), subject.splits, subject.spec
    val_logits, val_labels = collect_logits(model, splits.val, spec, desc="validation")
    test_logits, test_labels = collect_logits(model, splits.test, spec, desc="test")
    costs = model_costs(model, spec.shape)
    s_costs, h_costs = flops.stage_costs(model, tuple(spec.shape))
    stages, exits = model.running_stages()
    n_time = min(256, len(splits.test))
    x256 = next(model_inputs(splits.test, spec, n_time, torch.device("cpu"), indices=torch.arange(n_time)))[0]
    n1 = min(args.batch1_samples, len(splits.test))  # [n1, 1, C, H, W]: n1 batches of one
    x1 = next(model_inputs(splits.test, spec, n1, torch.device("cpu"), indices=torch.arange(n1)))[0].unsqueeze(1)
    rows = []
    for name, t in choose_thresholds(val_logits, val_labels).items():
        thresholds = [t, float("inf")]
        point = operating_point(test_logits, test_labels, thresholds, "entropy", costs)  # the cached-logit answer
        counts = point["exit_counts"]
        b256 = time_per_sample(model, stages, exits, x256, thresholds, args.reps)
        b1 = time_per_sample(model, stages, exits, x1, thresholds, max(3, args.reps // 3))
        rows.append(dict(name=name, threshold=t, exit_counts=counts, exit_percent=100 * counts[0] / len(test_labels),
                         simulated_accuracy=point["accuracy"], cost_mflops=point["cost_mflops"],
                         infer_accuracy=infer_accuracy(model, splits.test, spec, thresholds, "entropy", 1024),
                         cost_ratio=1 / point["cost_fraction"], batch256_ms=b256, batch1_ms=b1,
                         speedup256=b256["full"] / b256["infer"], speedup1=b1["full"] / b1["infer"]))
    parts = {"batch 256": time_parts(stages, exits, x256, args.reps), "batch 1": time_parts(stages, exits, x1[0],
                                                                                          args.reps)}
    part_flops = {"stage 0": s_costs[0], "exit 0 (branch)": h_costs[0], "stage 1": s_costs[1], "exit 1": h_costs[1]}
    test_accuracy = per_exit_accuracy(test_logits, test_labels)
    return dict(date=datetime.date.today().isoformat(), recipe=recipe,
                dataset=args.data if args.checkpoint is None else "from the checkpoint",
                cpu=cpu_name(), threads=torch.get_num_threads(),
                torch=torch.__version__, n_test=len(test_labels), n_val=len(val_labels), batch1_samples=n1,
                test_exit_accuracy=test_accuracy,
                val_exit_accuracy=per_exit_accuracy(val_logits, val_labels), full_mflops=costs.full / 1e6,
                exit_mflops=[c / 1e6 for c in costs.actual], rows=rows, parts=parts, part_flops=part_flops,
                branch_vs_stage0=branch_vs_stage(parts, part_flops),
                targets=targets(rows, test_accuracy[-1]), paper=PAPER)


def branch_vs_stage(parts: Dict[str, Dict[str, float]], part_flops: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """Per batch size: the branch's wall time over stage 0's, and the same per FLOP (1: alike per FLOP)."""
    flop_ratio = part_flops["exit 0 (branch)"] / part_flops["stage 0"]
    out = {}
    for batch, ms in parts.items():
        wall = ms["exit 0 (branch)"] / ms["stage 0"]
        out[batch] = dict(wall=wall, flops=flop_ratio, wall_per_flop=wall / flop_ratio)
    return out


def targets(rows: List[Dict[str, object]], final_accuracy: float) -> List[str]:
    """The issue's targets at the chosen threshold, met or MISSED with the figures."""
    r = next(r for r in rows if r["name"] == "chosen")
    drop = 100 * (final_accuracy - r["infer_accuracy"])
    lines = [f"accuracy within {ACCURACY_DROP} points of the final exit at >= {TARGET_EARLY:.0%} early exits: "
             f"{drop:.2f} points at {r['exit_percent']:.1f} % -> "
             f"{'met' if drop <= ACCURACY_DROP and r['exit_percent'] >= 100 * TARGET_EARLY else 'MISSED'}"]
    for batch in ("256", "1"):
        s = r[f"speedup{batch}"]
        lines.append(f"batch {batch}: speedup {s:.2f}x vs {TARGET_SPEEDUP} x cost ratio {r['cost_ratio']:.2f} = "
                     f"{TARGET_SPEEDUP * r['cost_ratio']:.2f}x ({s / r['cost_ratio']:.0%} of the ratio) -> "
                     f"{'met' if s >= TARGET_SPEEDUP * r['cost_ratio'] else 'MISSED'}")
    return lines


def markdown(res: Dict[str, object]) -> str:
    acc = res["test_exit_accuracy"]
    lines = [f"# BranchyNet Table 1 for B-LeNet, {res['dataset']}, CPU ({res['cpu']}, {res['threads']} threads, "
             f"torch {res['torch']}), {res['date']}", "",
             f"Weights: {res['recipe']}. Test split {res['n_test']} images, thresholds chosen on {res['n_val']} "
             f"validation images; entropy criterion (a sample leaves at the branch when its softmax entropy in nats "
             f"is below T). Exit accuracy on all test images: branch {100 * acc[0]:.2f} %, final {100 * acc[1]:.2f} %. "
             f"FLOPs (multiply-adds) per sample: leaving at the branch {res['exit_mflops'][0]:.3f} M, at the end "
             f"{res['exit_mflops'][1]:.3f} M, full network {res['full_mflops']:.3f} M. Times: ms per sample, medians "
             f"of interleaved rounds; batch 1 over the first {res['batch1_samples']} test images one at a time.", "",
             "| T (entropy) | exit % at branch | accuracy % (infer) | cost ratio | b256 full ms | b256 infer ms | "
             "b256 speedup | b1 full ms | b1 infer ms | b1 speedup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['threshold']:.4g} ({r['name']}) | {r['exit_percent']:.1f} | "
                     f"{100 * r['infer_accuracy']:.2f} | {r['cost_ratio']:.2f} | {r['batch256_ms']['full']:.4f} | "
                     f"{r['batch256_ms']['infer']:.4f} | "
                     f"{r['speedup256']:.2f}x | {r['batch1_ms']['full']:.3f} | {r['batch1_ms']['infer']:.3f} | "
                     f"{r['speedup1']:.2f}x |")
    p = res["paper"]
    lines.append(f"| paper, MNIST: {p['threshold']} | {p['exit_percent']} | {p['accuracy']} (LeNet "
                 f"{p['baseline_accuracy']}) | - | CPU {p['cpu_ms'][0]} | CPU {p['cpu_ms'][1]} | "
                 f"{p['cpu_ms'][0] / p['cpu_ms'][1]:.1f}x | GPU {p['gpu_ms'][0]} | GPU {p['gpu_ms'][1]} | "
                 f"{p['gpu_ms'][0] / p['gpu_ms'][1]:.1f}x |")
    lines += ["", "The paper's row (Teerapittayanon et al., ICPR 2016, Table 1; its CPU/GPU times per sample, batch "
              "size not comparable) is quoted as recalled: check the paper.", "", "Targets at the chosen T:", ""]
    lines += [f"- {t}" for t in res["targets"]]
    lines += ["", "Where the time goes (ms per call, median; FLOPs per sample):", "",
              "| part | MFLOPs | batch 256 ms | µs per sample | GMAC/s at 256 | batch 1 ms | GMAC/s at 1 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for part, mf in res["part_flops"].items():
        b256, b1 = res["parts"]["batch 256"][part], res["parts"]["batch 1"][part]
        lines.append(f"| {part} | {mf / 1e6:.3f} | {b256:.3f} | {1e3 * b256 / 256:.2f} | {256 * mf / 1e6 / b256:.1f} "
                     f"| {b1:.3f} | {mf / 1e6 / b1:.2f} |")
    lines.append("")
    lines += [f"Branch / stage 0 at {batch}: wall {r['wall']:.2f}x for {r['flops']:.2f}x the FLOPs, "
              f"{r['wall_per_flop']:.2f}x per FLOP." for batch, r in res["branch_vs_stage0"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for name in ("epochs", "reps", "batch1_samples"):
        if getattr(args, name) < 1:
            print(f"branchynet_table: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    repo = Path(__file__).resolve().parents[1]
    if args.work_dir is not None and repo in [args.work_dir.resolve(), *args.work_dir.resolve().parents]:
        print(f"branchynet_table: error: --work-dir {args.work_dir} is inside the repository {repo}; "
              "trained checkpoints stay out of it", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="branchynet-table-") as tmp:
            if args.work_dir is not None:
                args.work_dir.mkdir(parents=True, exist_ok=True)
            subject, recipe = get_model(args, args.work_dir or Path(tmp))
            res = measure(args, subject, recipe)
    except ValueError as err:  # missing or corrupt data, a checkpoint that is not B-LeNet's
        print(f"branchynet_table: error: {err}", file=sys.stderr)
        return 2
    text = markdown(res)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
