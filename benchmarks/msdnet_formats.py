"""The MSDNet presets' full network (every stage, the last exit): eexit's fused path against the
reference path, in both memory formats (``python benchmarks/msdnet_formats.py [--reps 7]``).

Issue 12's rule: the fused CPU path is never slower than the reference on the full network, in
channels_last and in contiguous (NCHW) input. Random weights, eval mode, inference mode, float32;
CIFAR presets at batch 256 (32 px), ImageNet step 4 at batch 16 (224 px). Interleaved rounds
(eexit.timing.interleaved_medians: both paths in turn every round), medians; prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import datetime
from typing import Optional, Sequence

import torch

from eexit.models import msdnet_cifar_anytime, msdnet_cifar_budgeted, msdnet_imagenet
from eexit.runner import run_full_network
from eexit.timing import interleaved_medians

from reporting import cpu_name, row, table_head

PRESETS = [("CIFAR-100 anytime", lambda: msdnet_cifar_anytime(100), 256, 32),
           ("CIFAR-100 budgeted", lambda: msdnet_cifar_budgeted(100), 256, 32),
           ("ImageNet step 4", lambda: msdnet_imagenet(4, 1000), 16, 224)]
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="interleaved rounds per case")
    parser.add_argument("--preset", action="append", choices=[p[0] for p in PRESETS],
                        help="only these presets (repeatable; default: all)")
    parser.add_argument("--batch", type=int, help="this batch size for every preset (default: theirs)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"# MSDNet full network, fused vs reference in both memory formats — {datetime.date.today()}\n")
    print(f"- CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"float32, eval, inference_mode; {args.reps} interleaved rounds, medians\n")
    print(table_head(["preset", "batch", "format", "reference ms", "fused ms", "reference / fused"], "lrlrrr"))
    for name, build, batch, px in PRESETS:
        if args.preset and name not in args.preset:
            continue
        batch = args.batch or batch
        net = build().eval()
        for fmt_name, fmt in FORMATS.items():
            x = torch.randn(batch, 3, px, px).contiguous(memory_format=fmt)
            paths = {p: copy.deepcopy(net).set_backend(p).to(memory_format=fmt) for p in ("reference", "fused")}
            runs = {p: (lambda m=m: run_full_network(*m.exit_stages(), x)) for p, m in paths.items()}
            with torch.inference_mode():
                ms = interleaved_medians(runs, args.reps)
            print(row([name, batch, fmt_name, f"{ms['reference']:.1f}", f"{ms['fused']:.1f}",
                       f"{ms['reference'] / ms['fused']:.2f}"]), flush=True)


if __name__ == "__main__":
    main()
