"""Real sample-level early exit over any list of stages and exits.

Stage k maps the previous stage's output (the input for k = 0) to its own output: a tensor,
or a list/tuple of tensors (multi-scale backbones), batch on dim 0. Exit k maps stage k's
output to logits [b, C]. After each exit the gate splits the batch; the exiting rows are
written to the outputs at their original batch positions and the features of the others are
compacted, so later stages only see the samples still active. Once nobody is left, later
stages and exits are never run. The last exit takes everyone left, whatever its threshold.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import List, NamedTuple, Sequence, Union

import torch
from torch import nn

from eexit import ops, reference
from eexit._checks import as_threshold, check_criterion, check_threshold

Features = Union[torch.Tensor, Sequence[torch.Tensor]]
Thresholds = Union[float, Sequence[float]]


class EarlyExitOutput(NamedTuple):
    """logits [B, C] of the exit each sample left at; pred int64 [B]; exit_index int64 [B]
    (0-based); score float32 [B] (confidence or entropy, by criterion) at that exit."""

    logits: torch.Tensor
    pred: torch.Tensor
    exit_index: torch.Tensor
    score: torch.Tensor


def check_thresholds(thresholds: Thresholds, n_exits: int, criterion: str) -> List[float]:
    """One float per exit. A single number applies to every exit. Confidence thresholds are in
    [0, 1] or +inf (nobody leaves there), entropy thresholds >= 0; the last one is not used."""
    check_criterion(criterion)
    if isinstance(thresholds, (list, tuple)):
        if len(thresholds) != n_exits:
            raise ValueError(f"thresholds: expected one per exit ({n_exits}), got {len(thresholds)}")
        values = [as_threshold(t) for t in thresholds]
    elif isinstance(thresholds, torch.Tensor) and thresholds.numel() > 1:
        return check_thresholds(thresholds.flatten().tolist(), n_exits, criterion)
    else:
        values = [as_threshold(thresholds)] * n_exits
    for k, t in enumerate(values[:-1]):
        if not (criterion == "confidence" and t == math.inf):
            try:
                check_threshold(t, criterion)
            except ValueError as err:
                raise ValueError(f"thresholds[{k}]: {err}") from None
    return values


def _batch_size(x: Features) -> int:
    return x.shape[0] if isinstance(x, torch.Tensor) else x[0].shape[0]


def _compact(x: Features, keep: torch.Tensor, gate) -> Features:
    if isinstance(x, torch.Tensor):
        return gate.compact([x], keep)[0]
    return gate.compact(list(x), keep)


def gated_step(stage: nn.Module, head: nn.Module, h: Features, threshold: float, criterion: str,
               gate: ModuleType = ops):
    """Stage, exit, gate and compaction of one step: (logits [b, C], the gate's decision, the
    stage output's rows that stay). What ``steps`` of :func:`run_early_exit` compute, in one
    function that ``torch.compile`` can take whole (:func:`eexit.compile` with ``gate="inside"``)."""
    h = stage(h)
    logits = head(h)
    dec = gate.exit_gate(logits, threshold, criterion)
    return logits, dec, _compact(h, dec.keep_idx, gate)


def run_early_exit(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x: Features,
                   thresholds: Thresholds, criterion: str = "confidence", gate: ModuleType = ops,
                   steps=None) -> EarlyExitOutput:
    """Runs stages and exits on the samples still active; see the module docstring.

    gate: the module whose ``exit_gate`` and ``compact`` split and compact the batch: :mod:`eexit.ops`
    (fused, the default) or :mod:`eexit.reference`. steps: None, or one callable per exit but the
    last, ``steps[k](h, threshold, criterion)`` computing what :func:`gated_step` computes for
    stage k (a compiled one); used at every exit but the last where someone may leave.
    """
    if len(stages) != len(exits) or not stages:
        raise ValueError(f"stages and exits must be non-empty and as many, got {len(stages)} and {len(exits)}")
    thr = check_thresholds(thresholds, len(exits), criterion)
    n = _batch_size(x)
    active = None  # original positions of the active rows; None while they are all of them, in order
    parts = []  # (positions or None, logits, pred, score, exit) of the rows that left
    classes = None
    h = x
    for k, (stage, head) in enumerate(zip(stages, exits)):
        last = k == len(exits) - 1
        stepped = steps is not None and not last and thr[k] != math.inf
        if stepped:
            logits, dec, kept = steps[k](h, thr[k], criterion)
        else:
            h = stage(h)
            logits = head(h)
        rows = n if active is None else active.numel()
        if logits.dim() != 2 or logits.shape[0] != rows:
            raise ValueError(f"exits[{k}] must return logits [{rows}, C], got shape {tuple(logits.shape)}")
        if classes is not None and logits.shape[1] != classes:
            raise ValueError(f"exits[{k}] returned {logits.shape[1]} classes, exits[0] returned {classes}")
        classes = logits.shape[1]
        if not last and thr[k] == math.inf:
            continue  # nobody can leave here: no gate
        if not stepped:
            dec = gate.exit_gate(logits, 0.0 if last else thr[k], criterion)  # the last one's split is unused
        leave = rows if last else dec.exit_idx.numel()
        if leave == rows:  # everyone left: no gathering
            parts.append((active, logits, dec.pred, dec.score, k))
            break
        if leave:
            idx = dec.exit_idx
            where = idx if active is None else active.index_select(0, idx)
            parts.append((where, logits.index_select(0, idx), dec.pred.index_select(0, idx),
                          dec.score.index_select(0, idx), k))
            keep = dec.keep_idx
            active = keep if active is None else active.index_select(0, keep)
            h = kept if stepped else _compact(h, keep, gate)
        elif stepped:
            h = kept  # everyone stays: the stage output's rows, all of them
    if len(parts) == 1 and parts[0][0] is None:  # the whole batch left at one exit
        _, logits, pred, score, k = parts[0]
        return EarlyExitOutput(logits, pred, torch.full_like(pred, k), score)
    first = parts[0][1]
    out = EarlyExitOutput(first.new_empty((n, classes)), torch.empty(n, dtype=torch.long, device=first.device),
                          torch.empty(n, dtype=torch.long, device=first.device),
                          torch.empty(n, dtype=torch.float32, device=first.device))
    for where, logits, pred, score, k in parts:
        if where is None:
            where = torch.arange(n, device=first.device)
        out.logits.index_copy_(0, where, logits.to(out.logits.dtype))
        out.pred.index_copy_(0, where, pred)
        out.score.index_copy_(0, where, score)
        out.exit_index.index_fill_(0, where, k)
    return out


def run_all_exits(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x: Features) -> List[torch.Tensor]:
    """Every stage and every exit for every sample (training, and the dense evaluation that the
    official code simulates early exit from): each exit's logits [B, C], in order."""
    out, h = [], x
    for stage, head in zip(stages, exits):
        h = stage(h)
        out.append(head(h))
    return out


def run_full_network(stages: Sequence[nn.Module], exits: Sequence[nn.Module], x: Features) -> torch.Tensor:
    """The backbone alone, no early exit: every stage, then only the last exit's logits [B, C]."""
    h = x
    for stage in stages:
        h = stage(h)
    return exits[-1](h)


def simulate_early_exit(all_logits: Sequence[torch.Tensor], thresholds: Thresholds,
                        criterion: str = "confidence") -> EarlyExitOutput:
    """What early exit would give, from every exit's logits [B, C] for every sample (the dense,
    official-style simulation): each sample takes the first exit whose score passes."""
    thr = check_thresholds(thresholds, len(all_logits), criterion)
    n = all_logits[0].shape[0]
    device = all_logits[0].device
    exit_index = torch.full((n,), len(all_logits) - 1, dtype=torch.long, device=device)
    decided = torch.zeros(n, dtype=torch.bool, device=device)
    scores = [reference.gate_scores(z, criterion) for z in all_logits]
    for k, s in enumerate(scores[:-1]):
        passed = torch.zeros_like(decided) if thr[k] == math.inf else reference.exits(s, thr[k], criterion)
        newly = passed & ~decided
        exit_index[newly] = k
        decided |= passed
    stacked = torch.stack(list(all_logits))  # [K, B, C]
    rows = torch.arange(n, device=device)
    logits = stacked[exit_index, rows]
    return EarlyExitOutput(logits, torch.argmax(logits, 1), exit_index, torch.stack(scores)[exit_index, rows])
