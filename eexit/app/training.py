"""Training of early-exit models with the joint loss: single process or DistributedDataParallel.

Run under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes its share of each global batch
(gloo on CPU, nccl on CUDA); gradients are averaged so a step equals the single-process step on
the whole batch (up to BatchNorm, whose statistics stay per process). Only rank 0 evaluates and
writes checkpoints.

Reproducible and resumable: the shuffling and augmentation of epoch e come from generators
seeded by (seed, e), and dropout's from the global generator reseeded at every epoch, so an
interrupted run resumed from its last checkpoint (written atomically after every epoch) ends
with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from eexit.app import checkpoint, data, zoo
from eexit.app.data.transforms import AUGMENTATIONS, augment, to_model_input
from eexit.app.devices import resolve_device
from eexit.app.evaluation import InputSpec, collect_logits, per_exit_accuracy
from eexit.app.progress import bar
from eexit.losses import joint_loss

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step")


@dataclasses.dataclass
class TrainConfig:
    """What ``eexit train`` takes; see its ``--help`` for each field."""

    model: str
    data: str
    out: str
    data_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    exit_weights: Optional[List[float]] = None
    augment: Optional[str] = None
    seed: int = 0
    split_seed: int = 0
    val_size: Optional[int] = None
    device: str = "cpu"
    workers: int = 0
    resume: bool = False
    overwrite: bool = False

    def check(self) -> None:
        zoo.entry(self.model)
        if self.data not in data.DATASETS:
            raise ValueError(f"unknown data set {self.data!r}; one of {', '.join(data.DATASETS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream) % (2 ** 63)


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))  # step: /10 at 50% and 75%


def _distributed(device: str) -> tuple:
    """(rank, world size, local device) from torchrun's environment; joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(f"cuda:{local}" if device.startswith("cuda") else device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), world, dev


def train(cfg: TrainConfig, log=print) -> Dict[str, Any]:
    """Trains ``cfg.model`` on ``cfg.data``; writes ``cfg.out`` after every epoch; returns the last
    checkpoint dict. Resumes from ``cfg.out`` when ``cfg.resume`` (and refuses to overwrite an
    existing file unless ``cfg.resume`` or ``cfg.overwrite``)."""
    cfg.check()
    rank, world, device = _distributed(cfg.device)
    log = log if rank == 0 else (lambda *a, **k: None)
    entry = zoo.entry(cfg.model)
    splits = data.load_splits(cfg.data, cfg.data_dir, split_seed=cfg.split_seed, val_size=cfg.val_size,
                              image_size=entry.input_shape[1])
    spec = InputSpec(entry.input_shape, splits.mean, splits.std)
    data_info = dict(name=cfg.data, data_dir=cfg.data_dir and os.path.abspath(cfg.data_dir),
                     split_seed=cfg.split_seed, val_size=cfg.val_size, classes=list(splits.classes),
                     mean=list(splits.mean), std=list(splits.std))
    kind = cfg.augment or splits.augment

    torch.manual_seed(cfg.seed)
    model = zoo.build(cfg.model, len(splits.classes)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.momentum > 0)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = len(splits.train)
    if n_train < world:
        raise ValueError(f"the training split has {n_train} samples, fewer than the {world} processes")
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    if n_train % cfg.batch_size and n_train % cfg.batch_size < world:
        steps_per_epoch -= 1  # a last batch too small to give every process a sample is dropped
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg.schedule, s, total))

    start, history = 0, []
    if os.path.exists(cfg.out) and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"{cfg.out} exists: pass --resume to continue that run or --overwrite to start afresh")
    if cfg.resume and os.path.exists(cfg.out):
        ckpt = checkpoint.load(cfg.out)
        for key, want in (("model", cfg.model), ("num_classes", len(splits.classes))):
            if ckpt[key] != want:
                raise ValueError(f"--resume: {cfg.out} holds {key} {ckpt[key]!r}, not {want!r}")
        if ckpt["data"]["name"] != cfg.data:
            raise ValueError(f"--resume: {cfg.out} was trained on {ckpt['data']['name']!r}, not {cfg.data!r}")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start, history = ckpt["epoch"], list(ckpt.get("history", []))
        log(f"resuming {cfg.out} after epoch {start}")
    elif cfg.resume:
        log(f"--resume: {cfg.out} does not exist yet, starting afresh")

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ckpt: Dict[str, Any] = {}
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 0)))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 1 + rank))
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, 10_000 + rank))  # dropout
        model.train()
        loss_sum, seen = 0.0, 0
        chunks = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size] for s in range(steps_per_epoch)]
        steps = bar(zip(chunks, data.chunk_batches(splits.train, [c[rank::world] for c in chunks], cfg.workers)),
                    total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank > 0)
        for batch, (x, y) in steps:
            x = augment(to_model_input(x, spec.shape, spec.mean, spec.std), kind, aug_gen).to(device)
            loss = joint_loss(net(x), y.to(device), cfg.exit_weights)
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over processes: weigh each share by its size so that the step
            # is the one of the mean loss over the whole batch
            (loss * (len(y) * world / len(batch))).backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            steps.set_postfix(loss=f"{loss_sum / seen:.3f}")
        record: Dict[str, Any] = dict(epoch=epoch + 1, train_loss=loss_sum / max(seen, 1),
                                      lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        if rank == 0:
            logits, labels = collect_logits(model, splits.val, spec, device=device, desc="validation")
            record["val_accuracy"] = per_exit_accuracy(logits, labels)
            history.append(record)
            ckpt = dict(model=cfg.model, num_classes=len(splits.classes), data=data_info,
                        train=dataclasses.asdict(cfg), epoch=epoch + 1, history=history,
                        state_dict=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict())
            checkpoint.save(ckpt, cfg.out)
            acc = " ".join(f"{a:.3f}" for a in record["val_accuracy"])
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}, "
                f"val accuracy per exit {acc} ({record['seconds']:.1f} s)")
        if world > 1:
            dist.barrier()
    if not ckpt and rank == 0:
        ckpt = checkpoint.load(cfg.out)
        log(f"{cfg.out} already holds {ckpt['epoch']} epochs; nothing to do (raise --epochs to train on)")
    return ckpt
