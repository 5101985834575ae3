"""eexit's fused path against the reference path in both memory formats: the MSDNet presets' full
network (every stage, the last exit) and the dense benchmark's DenseConcatBlock shapes
(``python benchmarks/memory_formats.py [--reps 7]``).

Issue 12's rule: the fused CPU path is never slower than the reference, in channels_last and in
contiguous (NCHW) input, for the MSDNet presets and the DenseNet-BC block shapes. Random weights,
eval mode, inference mode, float32; CIFAR presets at batch 256 (32 px), ImageNet step 4 at batch 16
(224 px), dense blocks at the dense benchmark's cases (``test_bench_dense.CASES``). Interleaved
rounds (eexit.timing.interleaved_medians: both paths in turn every round), medians; prints a
markdown table.
"""
from __future__ import annotations

import argparse
import copy
import datetime
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from eexit.models import msdnet_cifar_anytime, msdnet_cifar_budgeted, msdnet_imagenet
from eexit.nn import DenseConcatBlock
from eexit.runner import run_full_network
from eexit.timing import interleaved_medians

from reporting import cpu_name, row, table_head
from test_bench_dense import CASES, case_id, randomise_bn

# (name, build, batch, input shape per sample)
Case = Tuple[str, Callable[[], nn.Module], int, Tuple[int, int, int]]
MSDNET: List[Case] = [("CIFAR-100 anytime", lambda: msdnet_cifar_anytime(100), 256, (3, 32, 32)),
                      ("CIFAR-100 budgeted", lambda: msdnet_cifar_budgeted(100), 256, (3, 32, 32)),
                      ("ImageNet step 4", lambda: msdnet_imagenet(4, 1000), 16, (3, 224, 224))]


def _dense(c: int, g: int, layers: int) -> nn.Module:
    block = DenseConcatBlock(c, g, layers, bn_size=4)
    randomise_bn(block, torch.Generator().manual_seed(c * 100 + layers))
    return block


DENSE: List[Case] = [(f"dense {case_id((shape, n))}", lambda shape=shape: _dense(shape[1], shape[3], shape[4]), n,
                       (shape[1], shape[2], shape[2])) for shape, n in CASES]  # shape: (family, C, px, growth, L)
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def forward(model: nn.Module, x: torch.Tensor):
    """The full network of an early-exit model (every stage, the last exit), else model(x)."""
    return run_full_network(*model.exit_stages(), x) if hasattr(model, "exit_stages") else model(x)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="interleaved rounds per case")
    parser.add_argument("--case", action="append", choices=[c[0] for c in MSDNET + DENSE],
                        help="only these cases (repeatable; default: all)")
    parser.add_argument("--batch", type=int, help="this batch size for every case (default: theirs)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"# Fused vs reference in both memory formats — {datetime.date.today()}\n")
    print(f"- CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"float32, eval, inference_mode; {args.reps} interleaved rounds, medians\n")
    print(table_head(["case", "batch", "format", "reference ms", "fused ms", "reference / fused"], "lrlrrr"))
    for name, build, batch, shape in MSDNET + DENSE:
        if args.case and name not in args.case:
            continue
        batch = args.batch or batch
        model = build().eval()
        for fmt_name, fmt in FORMATS.items():
            x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
            paths = {p: copy.deepcopy(model).set_backend(p).to(memory_format=fmt) for p in ("reference", "fused")}
            runs = {p: (lambda m=m: forward(m, x)) for p, m in paths.items()}
            with torch.inference_mode():
                ms = interleaved_medians(runs, args.reps)
            print(row([name, batch, fmt_name, f"{ms['reference']:.1f}", f"{ms['fused']:.1f}",
                       f"{ms['reference'] / ms['fused']:.2f}"]), flush=True)


if __name__ == "__main__":
    main()
