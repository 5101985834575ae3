"""Options, loading and tables shared by the commands."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import torch
from torch import nn

from eexit.app import checkpoint, data, zoo
from eexit.app.devices import resolve_device
from eexit.app.evaluation import InputSpec
from eexit.runner import check_thresholds


def common_options() -> argparse.ArgumentParser:
    """--device and --progress, which every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bars on stderr: auto (when it is a terminal), on or off")
    return p


def add_subject_options(parser: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """What a command evaluates: an eexit checkpoint, or with --official a checkpoint of the
    official MSDNet-PyTorch code plus the model and data it was trained on."""
    g = parser.add_argument_group("model and data")
    g.add_argument("--checkpoint", required=checkpoint_required, type=Path, metavar="PATH",
                   help="checkpoint written by eexit train (or by the official MSDNet code with --official)")
    g.add_argument("--official", action="store_true",
                   help="the checkpoint comes from github.com/kalviny/MSDNet-PyTorch (main.py's "
                        "{'state_dict': ...} with the module. prefix, or a bare state_dict); needs --model and --data")
    g.add_argument("--model", choices=list(zoo.MODELS), metavar="NAME",
                   help="with --official: the MSDNet preset the checkpoint was trained as (" +
                   ", ".join(m for m, e in zoo.MODELS.items() if e.official) + ")")
    g.add_argument("--data", choices=data.DATASETS,
                   help="with --official: its data set (default: the one recorded in an eexit checkpoint)")
    g.add_argument("--data-dir", metavar="PATH",
                   help="where the data set lies (default: the folder recorded in an eexit checkpoint)")
    g.add_argument("--split-seed", type=int, default=0, help="with --official: seed of the validation hold-out")
    g.add_argument("--val-size", type=int, help="with --official: size of the validation hold-out")
    g.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")


class Subject(NamedTuple):
    """A loaded model (eval mode, on its device) with the splits and input spec of its data."""

    model: nn.Module
    name: str
    splits: data.ImageSplits
    spec: InputSpec
    path: Path
    device: torch.device


def load_subject(args: argparse.Namespace) -> Subject:
    """The model and data named by :func:`add_subject_options`' options."""
    device = resolve_device(args.device)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.official:
        if args.model or args.data:
            raise ValueError("--model and --data go with --official; an eexit checkpoint records them")
        return subject_from_checkpoint(args.checkpoint, device, args.data_dir)
    if not args.model or not args.data:
        raise ValueError("--official needs --model (the MSDNet preset) and --data")
    entry = zoo.entry(args.model)
    if entry.official is None:
        raise ValueError(f"--official: {args.model} has no official checkpoints; one of "
                         + ", ".join(m for m, e in zoo.MODELS.items() if e.official))
    splits = data.load_splits(args.data, args.data_dir, split_seed=args.split_seed, val_size=args.val_size,
                              image_size=entry.input_shape[1])
    from eexit.models import MSDNet

    model = MSDNet.load_official(checkpoint.read_torch(args.checkpoint), preset=entry.official,
                                 num_classes=len(splits.classes))
    spec = InputSpec(entry.input_shape, splits.mean, splits.std)
    return Subject(model.to(device).eval(), args.model, splits, spec, args.checkpoint, device)


def subject_from_checkpoint(path: Path, device: torch.device, data_dir: Optional[str] = None) -> Subject:
    """An eexit checkpoint's model with the splits it was trained on (read from ``data_dir`` when the
    data moved since)."""
    ckpt = checkpoint.load(path)
    model, name = checkpoint.build_model(ckpt, path), ckpt["model"]
    info: Dict[str, Any] = ckpt["data"]
    entry = zoo.entry(name)
    splits = data.load_splits(info["name"], data_dir or info["data_dir"], split_seed=info["split_seed"],
                              val_size=info["val_size"], image_size=entry.input_shape[1])
    if list(splits.classes) != list(info["classes"]):
        raise ValueError(f"the data at {data_dir or info['data_dir']} has classes {list(splits.classes)[:5]}..., "
                         f"the checkpoint was trained on {info['classes'][:5]}...")
    spec = InputSpec(entry.input_shape, splits.mean, splits.std)
    return Subject(model.to(device).eval(), name, splits, spec, Path(path), device)


def operating_points(args: argparse.Namespace, n_exits: int, saved: bool) -> List[Dict[str, Any]]:
    """The operating points a command evaluates: with ``saved`` those of ``<checkpoint>.thresholds.json``
    (when the file exists), then ``--thresholds`` (one per exit, or one for all) with ``--criterion``.
    Each is a dict with at least name, thresholds (checked against the model's ``n_exits``), criterion."""
    points: List[Dict[str, Any]] = []
    if saved and args.checkpoint is not None and checkpoint.thresholds_path(args.checkpoint).is_file():
        file = checkpoint.load_thresholds(args.checkpoint)
        points += [dict(p, criterion=file["criterion"]) for p in file["points"]]
    if args.thresholds is not None:
        given = args.thresholds if len(args.thresholds) > 1 else args.thresholds[0]
        points.append(dict(name="--thresholds", method="given", thresholds=given, criterion=args.criterion))
    for p in points:
        p["thresholds"] = check_thresholds(p["thresholds"], n_exits, p["criterion"])
    return points


def fmt_threshold(t: float) -> str:
    return "inf" if t == math.inf else f"{t:.4g}"


def table(headers: List[str], rows: List[List[str]]) -> str:
    """A plain text table, right-aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def points_table(points: List[Dict[str, Any]], split: str) -> str:
    """One row per operating point: thresholds, accuracy, exit percentages and cost on ``split``."""
    rows = []
    for p in points:
        m = p[split]
        rows.append([p["name"], " ".join(fmt_threshold(t) for t in p["thresholds"][:-1]),
                     f"{100 * m['accuracy']:.2f}", " ".join(f"{100 * f:.0f}" for f in m["exit_fractions"]),
                     f"{m['cost_mflops']:.3f}", f"{100 * m['cost_fraction']:.0f}%"])
    return table(["point", "thresholds", f"{split} acc %", "exit % per stage", "MFLOPs", "of full"], rows)
