"""The `eexit` command line (also `python -m eexit`)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eexit", description="Real sample-level early exit for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="exit gate on a real classifier's logits: exits per threshold and timings",
        description="Fits a linear classifier on scikit-learn's digits (no download), then runs the exit "
        "gate on its test logits at several thresholds, printing the share of samples that exit, their "
        "accuracy, and the gate's time fused vs the pure-PyTorch reference.",
    )
    demo.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence",
                      help="exit rule: max probability >= threshold, or entropy (nats) < threshold")
    demo.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                      help="thresholds to try (default: a range suited to the criterion)")
    demo.add_argument("--batch", type=int, default=4096, help="rows in the timed batch (default 4096)")
    demo.add_argument("--reps", type=int, default=30, help="timed calls per measurement (default 30)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split and the fit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from eexit import demo

            demo.run(args.criterion, args.thresholds, args.batch, args.seed, args.reps)
    except (ValueError, TypeError, RuntimeError) as err:
        parser.exit(2, f"eexit {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
