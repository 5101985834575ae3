"""Training of early-exit models with the joint loss: single process or DistributedDataParallel.

Run under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes its share of each global batch
(gloo on CPU, nccl on CUDA); gradients are averaged so a step equals the single-process step on
the whole batch (up to BatchNorm, whose statistics stay per process). Only rank 0 evaluates and
writes checkpoints.

Reproducible and resumable: the shuffling and augmentation of epoch e come from generators
seeded by (seed, e), and dropout's from the global generator reseeded at every epoch, so an
interrupted run resumed from its last checkpoint (written atomically after every epoch) ends
with the same weights as an uninterrupted one.

Starting from a trained backbone:

* ``init_from`` (``--init-from FILE``) loads a state_dict the user has into
  ``getattr(model, "backbone", model)`` before training (:func:`load_init`): the torchvision
  model of an :func:`eexit.nn.attach_exits` entry, the model itself otherwise. FILE may be a
  plain state_dict or a dict holding it under ``"state_dict"`` (eexit checkpoints, many training
  scripts) or ``"model"``; DataParallel/DDP's ``module.`` prefix is removed. Every tensor in FILE
  must match a parameter or buffer of the target by name and shape, with one exception: the
  weights of the final classifier (the last ``nn.Linear`` of the last exit, or of the last stage
  when the last exit has none, e.g. torchvision's ``fc``) whose shapes differ from the model's in
  the first (class) dimension only, as a 1000-class ImageNet ``fc`` when training 10 classes, are
  skipped, keep their initialisation and are reported. Keys of the target that FILE lacks keep
  their initialisation and are listed in the log. Anything else (an unknown key, another shape
  mismatch, a file that is not a torch checkpoint or holds no tensors) is a ValueError naming the
  file and the keys. With ``resume`` and an existing ``out`` the checkpoint's weights win and
  FILE is not read (the run already started from it); when ``out`` does not exist yet,
  ``resume`` starts afresh from FILE.
* ``freeze_backbone`` trains only what lies outside the stages (``model.exit_stages()[0]``):
  the stages' parameters get ``requires_grad=False`` and are not given to the optimizer, and the
  stage modules stay in eval mode during training (BatchNorm uses and keeps its running
  statistics, dropout is off), so their parameters and buffers end bit-identical. For
  :func:`eexit.nn.attach_exits` models (``resnet18-exits``) the final classifier is part of the
  last stage and stays frozen too: only the attached exits train. For MSDNet and the BranchyNet
  models every exit, the final classifier included, trains. A run resumes only with the same
  ``freeze_backbone`` as it was started with.
* ``distill_weight`` W > 0 adds self-distillation to the joint loss:
  ``joint_loss + W * distillation_loss(outputs, distill_temperature)`` (:func:`eexit.losses.distillation_loss`:
  every earlier exit towards the detached final exit, T^2 * KL at temperature T).
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
from eexit.losses import distillation_loss, joint_loss
from eexit.models.state_dict import mismatch_report

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
    train_size: Optional[int] = None
    device: str = "cpu"
    workers: int = 0
    resume: bool = False
    overwrite: bool = False
    init_from: Optional[str] = None
    freeze_backbone: bool = False
    distill_weight: float = 0.0
    distill_temperature: float = 4.0

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
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"--train-size must be >= 1, got {self.train_size}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if not (self.distill_weight >= 0 and math.isfinite(self.distill_weight)):
            raise ValueError(f"--distill-weight must be a finite number >= 0, got {self.distill_weight}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ValueError(f"--distill-temperature must be a positive number, got {self.distill_temperature}")


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


def read_init(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of the state_dict in file ``path`` (plain, or under "state_dict" or "model"),
    without DataParallel's ``module.`` prefix; ValueError naming the file when it is missing, not a
    torch checkpoint, or holds no tensors."""
    try:
        obj = checkpoint.read_torch(path, "a torch file holding a state_dict (torch.save(model.state_dict(), FILE))")
    except ValueError as err:
        raise ValueError(f"--init-from: {err}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ValueError(f"--init-from: {path} holds no tensors (expected a state_dict, or a dict with one under "
                         f"'state_dict' or 'model'; got {type(obj).__name__})")
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}


def final_classifier(model: nn.Module, target: nn.Module) -> Optional[str]:
    """The name in ``target`` of the model's final classifier: the last nn.Linear of the last exit,
    or of the last stage when the last exit has none (attach_exits' identity exit); None if there
    is none."""
    stages, exits = model.exit_stages()
    for part in (exits[-1], stages[-1]):
        linears = [m for m in part.modules() if isinstance(m, nn.Linear)]
        if linears:
            return next((name for name, m in target.named_modules() if m is linears[-1]), None)
    return None


def load_init(model: nn.Module, path: str, log=print, layout: Optional[str] = None) -> List[str]:
    """Loads file ``path`` into ``getattr(model, "backbone", model)`` under the rule of
    ``--init-from`` (see the module docstring); logs what was loaded, skipped and left missing.
    ``layout``: the expected key layout, named in the error about unknown keys. Returns the
    skipped final-classifier keys. Nothing is loaded when it raises."""
    target = getattr(model, "backbone", model)
    what = f"the {type(target).__name__} backbone" if target is not model else "the model"
    state = read_init(path)
    own = target.state_dict()
    head = final_classifier(model, target)
    skipped = [k for k, v in state.items() if k in own and head is not None and k.rpartition(".")[0] == head
               and v.dim() == own[k].dim() and v.shape != own[k].shape and v.shape[1:] == own[k].shape[1:]]
    problems = mismatch_report(own, {k: v for k, v in state.items() if k not in skipped},
                               optional=lambda k: True)
    if problems:
        hint = f" (expected: {layout})" if layout and any(k not in own for k in state) else ""
        raise ValueError(f"--init-from: {path} does not fit {what}{hint}: " + "; ".join(problems))
    target.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    log(f"--init-from: loaded {len(state) - len(skipped)} tensors of {path} into {what}")
    if skipped:
        log(f"--init-from: skipped the final classifier's {', '.join(f'{k} {tuple(state[k].shape)}' for k in skipped)}"
            f" (the model's: {', '.join(str(tuple(own[k].shape)) for k in skipped)}): it keeps its initialisation")
    missing = [k for k in own if k not in state]
    if missing:
        log(f"--init-from: {len(missing)} keys of {what} are not in {path} and keep their initialisation: "
            + ", ".join(missing))
    return skipped


def freeze_stages(model: nn.Module) -> List[nn.Module]:
    """``requires_grad=False`` on the parameters of ``model.exit_stages()[0]``; returns those stages
    (which the training loop keeps in eval mode)."""
    stages = list(model.exit_stages()[0])
    for stage in stages:
        for p in stage.parameters():
            p.requires_grad_(False)
    return stages


def train(cfg: TrainConfig, log=print) -> Dict[str, Any]:
    """Trains ``cfg.model`` on ``cfg.data``; writes ``cfg.out`` after every epoch; returns the last
    checkpoint dict. Resumes from ``cfg.out`` when ``cfg.resume`` (and refuses to overwrite an
    existing file unless ``cfg.resume`` or ``cfg.overwrite``)."""
    cfg.check()
    rank, world, device = _distributed(cfg.device)
    log = log if rank == 0 else (lambda *a, **k: None)
    entry = zoo.entry(cfg.model)
    data_dir = data.resolve_data_dir(cfg.data, cfg.data_dir)  # recorded: where the data were found
    splits = data.load_splits(cfg.data, data_dir, split_seed=cfg.split_seed, val_size=cfg.val_size,
                              image_size=entry.input_shape[1])
    if cfg.train_size is not None:
        if cfg.train_size > len(splits.train):
            raise ValueError(f"--train-size {cfg.train_size} is more than the {len(splits.train)} samples of the "
                             f"{cfg.data} training split")
        keep = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(cfg.split_seed))
        splits = splits._replace(train=splits.train.subset(keep[:cfg.train_size].sort().values))
    spec = InputSpec(entry.input_shape, splits.mean, splits.std)
    data_info = dict(name=cfg.data, data_dir=data_dir and os.path.abspath(data_dir), train_size=len(splits.train),
                     split_seed=cfg.split_seed, val_size=cfg.val_size, classes=list(splits.classes),
                     mean=list(splits.mean), std=list(splits.std))
    kind = cfg.augment or splits.augment

    if os.path.exists(cfg.out) and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"{cfg.out} exists: pass --resume to continue that run or --overwrite to start afresh")
    resuming = cfg.resume and os.path.exists(cfg.out)

    torch.manual_seed(cfg.seed)
    model = zoo.build(cfg.model, len(splits.classes))
    skipped: List[str] = []
    if cfg.init_from and resuming:
        log(f"--init-from {cfg.init_from} is not read: resuming {cfg.out}, the weights come from there")
    elif cfg.init_from:
        skipped = load_init(model, cfg.init_from, log, entry.init_layout)
    model = model.to(device)
    frozen: List[nn.Module] = []
    if cfg.freeze_backbone:
        frozen = freeze_stages(model)
        if not cfg.init_from:
            log("--freeze-backbone without --init-from: the stages keep their random initialisation")
        if skipped and getattr(model, "backbone", None) is not None:
            log(f"--freeze-backbone: the final classifier ({', '.join(skipped)}) was not loaded and stays frozen "
                "at its random initialisation")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"--freeze-backbone: {cfg.model} has no parameters outside its stages to train")
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
    if resuming:
        ckpt = checkpoint.load(cfg.out)
        for key, want in (("model", cfg.model), ("num_classes", len(splits.classes))):
            if ckpt[key] != want:
                raise ValueError(f"--resume: {cfg.out} holds {key} {ckpt[key]!r}, not {want!r}")
        if ckpt["data"]["name"] != cfg.data:
            raise ValueError(f"--resume: {cfg.out} was trained on {ckpt['data']['name']!r}, not {cfg.data!r}")
        if bool(ckpt.get("train", {}).get("freeze_backbone", False)) != cfg.freeze_backbone:
            was = "with" if ckpt.get("train", {}).get("freeze_backbone") else "without"
            raise ValueError(f"--resume: {cfg.out} was trained {was} --freeze-backbone; resume it the same way")
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
        for stage in frozen:  # frozen stages: running statistics used and kept, no dropout
            stage.eval()
        loss_sum, seen = 0.0, 0
        chunks = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size] for s in range(steps_per_epoch)]
        steps = bar(zip(chunks, data.chunk_batches(splits.train, [c[rank::world] for c in chunks], cfg.workers)),
                    total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank > 0)
        for batch, (x, y) in steps:
            x = augment(to_model_input(x, spec.shape, spec.mean, spec.std), kind, aug_gen).to(device)
            outputs = net(x)
            loss = joint_loss(outputs, y.to(device), cfg.exit_weights)
            if cfg.distill_weight > 0:
                loss = loss + cfg.distill_weight * distillation_loss(outputs, cfg.distill_temperature)
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
