"""``eexit train``: joint-loss training with atomic checkpoints, resume and torchrun data parallelism."""
from __future__ import annotations

import argparse
import dataclasses

from eexit.app import data, zoo
from eexit.app.cli.common import HelpFormatter, common_options
from eexit.app.data.transforms import AUGMENTATIONS
from eexit.app.training import OPTIMIZERS, SCHEDULES, TrainConfig, train

HELP = "train an early-exit model (joint loss over every exit), resumable, data-parallel under torchrun"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", parents=[common_options()], help=HELP, formatter_class=HelpFormatter,
        description="Trains MODEL on DATA with the sum of every exit's cross-entropy (weighted by --exit-weights), "
        "evaluates each exit on the validation split after every epoch and writes the checkpoint --out "
        "atomically after every epoch (a temporary file renamed over it: an interrupted run loses at most the "
        "epoch in progress; --resume continues from the last complete one, with the same result as an "
        "uninterrupted run). Data: digits (scikit-learn's, offline), fashion-mnist / mnist (the four IDX files, "
        "gzipped or not, in --data-dir; Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist, where "
        "Debian's package dataset-fashion-mnist puts them), cifar10 / cifar100 (the python-pickle "
        "archive from the CIFAR site, extracted or not, under --data-dir) or folder (an ImageFolder tree: "
        "--data-dir/CLASS/IMAGE, or train/ val/ test/ subfolders of such trees). Images are resized to the "
        "model's input and grey/colour converted as needed. Data parallel: torchrun --nproc-per-node N -m "
        "eexit train ... (gloo on CPU, nccl with --device cuda; --batch-size is the global batch). Example: "
        "eexit train --model msdnet-cifar-budgeted --data cifar100 --data-dir ~/data --epochs 300 "
        "--out runs/msdnet.pt; exits for a ResNet-18 trained elsewhere (torchvision's key layout): eexit train "
        "--model resnet18-exits --data cifar10 --data-dir ~/data --init-from resnet18.pth --freeze-backbone "
        "--distill-weight 1 --out runs/r18.pt")
    p.add_argument("--model", required=True, choices=list(zoo.MODELS), metavar="MODEL",
                   help="one of: " + ", ".join(zoo.MODELS))
    p.add_argument("--data", required=True, choices=data.DATASETS, help="data set")
    p.add_argument("--data-dir", metavar="PATH",
                   help="where the data set lies (not needed for digits; default for fashion-mnist: "
                   "/usr/share/datasets/fashion-mnist when it exists)")
    p.add_argument("--out", metavar="PATH", help="checkpoint file (default runs/MODEL-DATA.pt)")
    p.add_argument("--epochs", type=int, default=10, help="epochs in all (with --resume: including those done)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="SGD (Nesterov momentum) or Adam")
    p.add_argument("--lr", type=float, help="initial learning rate (default 0.1 for sgd, 1e-3 for adam)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="cosine decay to 0 per step, or step: /10 at 50%% and 75%% of the steps")
    p.add_argument("--exit-weights", type=float, nargs="+", metavar="W", help="loss weight of each exit (default 1)")
    p.add_argument("--augment", choices=AUGMENTATIONS,
                   help="training augmentation (default: shift for digits, none for fashion-mnist and mnist, "
                   "crop-flip otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation hold-out")
    p.add_argument("--val-size", type=int, help="validation hold-out size (default: 5000 for CIFAR, Fashion-MNIST "
                   "and MNIST, 10%% for folders)")
    p.add_argument("--train-size", type=int, help="train on this many samples of the training split, drawn by "
                   "--split-seed (default: all; for quick runs)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (folder data)")
    b = p.add_argument_group("from a trained backbone")
    b.add_argument("--init-from", metavar="FILE",
                   help="start from the weights in FILE: a state_dict (plain, under 'state_dict' or 'model', "
                   "'module.' prefixes removed) loaded into the model's backbone ("
                   + "; ".join(f"{m}: {e.init_layout}" for m, e in zoo.MODELS.items() if e.init_layout)
                   + ") or, for the other models, the model itself (its own state_dict layout). Every tensor of "
                   "FILE must match a parameter or buffer by name and shape, except the final classifier's "
                   "weights when they differ in the number of classes only (skipped, reported); keys FILE lacks "
                   "keep their initialisation (listed). With --resume and an existing --out, FILE is not read: "
                   "the checkpoint's weights are used")
    b.add_argument("--freeze-backbone", action="store_true",
                   help="train only the exits: the stages' weights get no gradient and their BatchNorm statistics "
                   "stay as they are (stages in eval mode). resnet18-exits: its own fc (the last exit) is frozen "
                   "too; MSDNet, B-*: every exit, the final classifier included, trains")
    b.add_argument("--distill-weight", type=float, default=0.0, metavar="W",
                   help="self-distillation: add W * sum over the earlier exits of T^2 * KL(final exit || exit) at "
                   "temperature T, the final exit's logits detached (0: off)")
    b.add_argument("--distill-temperature", type=float, default=4.0, metavar="T",
                   help="softmax temperature of --distill-weight")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if --out exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["out"] = args.out or f"runs/{args.model}-{args.data}.pt"
    values.setdefault("lr", 0.1 if args.optimizer == "sgd" else 1e-3)
    ckpt = train(TrainConfig(**values))
    if ckpt:
        print(f"wrote {values['out']} (epoch {ckpt['epoch']})")
