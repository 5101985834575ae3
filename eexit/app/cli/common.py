"""Options, loading and tables shared by the commands."""
from __future__ import annotations

import argparse
import math
import struct
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from eexit.app import checkpoint, data, zoo
from eexit.app.devices import resolve_device
from eexit.app.evaluation import InputSpec
from eexit.runner import check_thresholds


class HelpFormatter(argparse.HelpFormatter):
    """Every command's help: each option's default once, "(default: X)" appended where the option
    has one (not None, False or empty) and its help does not already say what it defaults to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == [] or default == ()
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


#: where calibrated thresholds live, as every help text says it
THRESHOLDS_FILE = ("the thresholds file next to the checkpoint, named after it without its extension "
                   "(runs/msdnet.pt -> runs/msdnet.thresholds.json)")
#: the one convention of thresholds, as every help text says it
THRESHOLDS_RULE = ("one threshold per exit, the last exit's included (the last exit takes everyone left: its "
                   "value is not used), as every table of eexit prints them and model.infer takes them; or "
                   "one value for every exit. 'inf' (confidence) or 0 (entropy): nobody leaves at that exit")


def common_options() -> argparse.ArgumentParser:
    """--device and --progress, which every command takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bars on stderr: auto (when it is a terminal), on or off")
    return p


def add_thresholds_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--thresholds and --criterion; ``what``: what --thresholds is to the command."""
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T", help=f"{what}: {THRESHOLDS_RULE}")
    parser.add_argument("--criterion", choices=["confidence", "entropy"], default="confidence",
                        help="exit rule of --thresholds: max softmax probability >= T, or entropy (nats) < T")


def add_subject_options(parser: argparse.ArgumentParser, checkpoint_required: bool = True,
                        batch: str = "evaluation batch size") -> None:
    """What a command evaluates: an eexit checkpoint, or with --official a checkpoint of the
    official MSDNet-PyTorch code plus the model and data it was trained on. Without
    ``checkpoint_required`` (bench), --model alone names a zoo model to build with random weights."""
    g = parser.add_argument_group("model and data")
    g.add_argument("--checkpoint", required=checkpoint_required, type=Path, metavar="PATH",
                   help=f"{checkpoint.EEXIT_CHECKPOINT} (or a torch file of the official MSDNet code, with --official)")
    g.add_argument("--official", action="store_true",
                   help="the checkpoint comes from github.com/kalviny/MSDNet-PyTorch (main.py's "
                        "{'state_dict': ...} with the module. prefix, or a bare state_dict); needs --model and --data")
    official = ", ".join(m for m, e in zoo.MODELS.items() if e.official)
    model_help = f"with --official: the MSDNet preset the checkpoint was trained as ({official})"
    if not checkpoint_required:
        model_help += (f"; without --checkpoint: any model of the zoo, built with random weights ("
                       f"{', '.join(zoo.MODELS)}; resnet18-exits and mobilenet-v3-small-exits need torchvision)")
    g.add_argument("--model", choices=list(zoo.MODELS), metavar="NAME", help=model_help)
    g.add_argument("--data", choices=data.DATASETS,
                   help="with --official: its data set (an eexit checkpoint records its own)")
    g.add_argument("--data-dir", metavar="PATH",
                   help="where the data set lies (default: the folder recorded in an eexit checkpoint)")
    g.add_argument("--split-seed", type=int, default=0, help="with --official: seed of the validation hold-out")
    g.add_argument("--val-size", type=int, help="with --official: size of the validation hold-out")
    g.add_argument("--batch-size", type=int, default=256, help=batch)


#: what --official takes as --checkpoint
OFFICIAL_FILE = "a torch file saved by the official MSDNet code (e.g. model_best.pth.tar) or a state_dict"


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
    weights = checkpoint.read_torch(args.checkpoint, OFFICIAL_FILE)  # a bad file fails before the data load
    splits = data.load_splits(args.data, args.data_dir, split_seed=args.split_seed, val_size=args.val_size,
                              image_size=entry.input_shape[1])
    from eexit.models import MSDNet

    try:
        model = MSDNet.load_official(weights, preset=entry.official, num_classes=len(splits.classes))
    except ValueError as err:
        raise ValueError(f"checkpoint {args.checkpoint}: {err}") from None
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
    """The operating points a command evaluates: with ``saved`` those of the thresholds file of the
    checkpoint (:func:`eexit.app.checkpoint.thresholds_path`, when it exists), then ``--thresholds``
    (one per exit, or one for all) with ``--criterion``. Each is a dict with at least name,
    thresholds (checked against the model's ``n_exits``: count, range, criterion) and criterion.
    Cheap: call it before any evaluation work, so that thresholds that do not fit fail at once."""
    points: List[Dict[str, Any]] = []
    sources: List[str] = []  # where each point comes from, for messages
    if saved and args.checkpoint is not None and checkpoint.thresholds_path(args.checkpoint).is_file():
        file = checkpoint.load_thresholds(args.checkpoint)
        points += [dict(p, criterion=file["criterion"]) for p in file["points"]]
        sources += [f"{checkpoint.thresholds_path(args.checkpoint)}, point {p['name']!r}" for p in file["points"]]
    if args.thresholds is not None:
        given = args.thresholds if len(args.thresholds) > 1 else args.thresholds[0]
        points.append(dict(name="--thresholds", method="given", thresholds=given, criterion=args.criterion))
        sources.append("--thresholds")
    for p, where in zip(points, sources):
        given = p["thresholds"]
        if isinstance(given, (list, tuple)) and len(given) != n_exits:
            raise ValueError(f"{where}: expected one per exit ({n_exits}), got {len(given)}; the last exit's is "
                             "required too, although it takes everyone left")
        try:
            p["thresholds"] = check_thresholds(given, n_exits, p["criterion"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {str(err).replace('exit_gate: ', '')}") from None
    return points


def n_exits(model: nn.Module) -> int:
    """How many exits an early-exit model has."""
    return len(model.exit_stages()[1])


def _float32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


def fmt_threshold(t: float) -> str:
    """A threshold as text that reads back (``float()``, ``--thresholds``) as the same threshold for
    the exit gate, which compares in float32: the fewest significant digits that round to the same
    float32, "inf" for infinity."""
    if not math.isfinite(t):
        return str(t)
    try:
        target = _float32(t)
    except OverflowError:  # beyond float32: the gate sees inf, but say what was given
        return repr(t)
    for digits in range(1, 18):
        text = f"{t:.{digits}g}"
        if _float32(float(text)) == target:
            return text
    return repr(t)


def fmt_thresholds(thresholds: Sequence[float]) -> str:
    """A point's thresholds, one per exit (the last included), as ``--thresholds`` takes them."""
    return " ".join(fmt_threshold(t) for t in thresholds)


def thresholds_lines(points: Sequence[Tuple[str, Sequence[float]]]) -> str:
    """Lines ``name: t0 t1 ... tK-1`` under a title saying how to paste them back."""
    return "\n".join(["thresholds, one per exit (paste after --thresholds, or as model.infer(x, thresholds=[...])); "
                      "the last exit takes everyone left, its value is unused:"]
                     + [f"  {name}: {fmt_thresholds(t)}" for name, t in points])


def table(headers: List[str], rows: List[List[str]]) -> str:
    """A plain text table, right-aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def points_table(points: List[Dict[str, Any]], split: str) -> str:
    """One row per operating point: thresholds (one per exit, as --thresholds takes them), accuracy,
    exit percentages and cost on ``split``."""
    rows = []
    for p in points:
        m = p[split]
        rows.append([p["name"], fmt_thresholds(p["thresholds"]),
                     f"{100 * m['accuracy']:.2f}", " ".join(f"{100 * f:.0f}" for f in m["exit_fractions"]),
                     f"{m['cost_mflops']:.3f}", f"{100 * m['cost_fraction']:.0f}%"])
    return table(["point", "thresholds (one per exit)", f"{split} acc %", "exit % per stage", "MFLOPs", "of full"],
                 rows)
