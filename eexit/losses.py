"""Training losses for early-exit networks."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "joint_loss"]

Weights = Union[Sequence[float], torch.Tensor]


def joint_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor,
               weights: Optional[Weights] = None) -> torch.Tensor:
    """BranchyNet's joint objective (Teerapittayanon et al., ICPR 2016, Sec. III-B):
    ``sum_k weights[k] * cross_entropy(outputs[k], target)``, each term the batch-mean softmax
    cross-entropy of exit k (as Chainer's ``F.softmax_cross_entropy`` in the official code).
    MSDNet trains with the same objective (official ``main.py``: every classifier's cross-entropy,
    summed), so one loss serves both.

    outputs: every exit's logits, [B, C] each (e.g. ``EarlyExitNetwork.forward``); target: class
    indices [B] (or class probabilities [B, C], as ``F.cross_entropy`` accepts); weights: one
    finite number >= 0 per exit, or a 1-D tensor of them (used as given, so it may carry grad);
    default 1 for every exit. Returns a scalar tensor. Raises ValueError on an empty ``outputs``,
    a ``weights`` of the wrong length or with negative / non-finite values, or outputs whose batch
    size differs from the target's.
    """
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence):
        raise ValueError(
            f"joint_loss: outputs must be a list or tuple of per-exit logits, got {type(outputs).__name__}"
        )
    n = len(outputs)
    if n == 0:
        raise ValueError("joint_loss: outputs is empty; expected one logits tensor per exit")
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"joint_loss: target must be a tensor, got {type(target).__name__}")
    for k, out in enumerate(outputs):
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"joint_loss: outputs[{k}] must be a tensor, got {type(out).__name__}")
        if out.dim() < 2:
            raise ValueError(f"joint_loss: outputs[{k}] must be logits [B, C], got shape {tuple(out.shape)}")
        if target.dim() == 0 or out.shape[0] != target.shape[0]:
            raise ValueError(
                f"joint_loss: outputs[{k}] has batch size {out.shape[0]} but target has shape {tuple(target.shape)}"
            )

    if weights is None:
        w: Union[Sequence[float], torch.Tensor] = [1.0] * n
    elif isinstance(weights, torch.Tensor):
        if weights.dim() != 1 or weights.numel() != n:
            raise ValueError(
                f"joint_loss: weights must hold one value per exit ({n}), got shape {tuple(weights.shape)}"
            )
        if weights.is_complex() or not weights.is_floating_point():
            weights = weights.to(torch.get_default_dtype())
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError(f"joint_loss: weights must be finite and >= 0, got {weights.tolist()}")
        w = weights
    else:
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise ValueError(
                f"joint_loss: weights must be a sequence of numbers or a tensor, got {type(weights).__name__}"
            )
        if len(weights) != n:
            raise ValueError(f"joint_loss: {len(weights)} weights for {n} exits; expected one weight per exit")
        w = []
        for k, v in enumerate(weights):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"joint_loss: weights[{k}] must be a finite number >= 0, got {v!r}")
            w.append(float(v))

    total = None
    for k, out in enumerate(outputs):
        term = w[k] * F.cross_entropy(out, target)
        total = term if total is None else total + term
    return total



def distillation_loss(outputs: Sequence[torch.Tensor], temperature: float = 4.0) -> torch.Tensor:
    """Self-distillation of the final exit into the earlier ones (Hinton et al., 2015, with the last
    exit as the teacher):

    ``sum_{k < K-1} T**2 * KL(softmax(z_{K-1} / T) || softmax(z_k / T))``

    where ``z_k = outputs[k]`` are exit k's logits [B, C], K = ``len(outputs)``, T =
    ``temperature`` and each KL is ``sum_c p_c * (log p_c - log q_c)`` averaged over the batch
    (``F.kl_div(..., reduction="batchmean")``). The teacher ``z_{K-1}`` is detached: the loss
    trains the early exits towards the final one, never the final exit towards them. The T**2
    factor keeps the gradients' scale independent of T.

    outputs: every exit's logits, [B, C] each, all of one shape (e.g. ``EarlyExitNetwork.forward``);
    temperature: a finite number > 0. Returns a scalar tensor (0 for a single exit). Raises
    ValueError on an empty ``outputs``, a non-tensor or non-[B, C] entry, exits whose shapes
    differ, or a bad temperature.
    """
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence):
        raise ValueError(
            f"distillation_loss: outputs must be a list or tuple of per-exit logits, got {type(outputs).__name__}"
        )
    if len(outputs) == 0:
        raise ValueError("distillation_loss: outputs is empty; expected one logits tensor per exit")
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"distillation_loss: temperature must be a finite number > 0, got {temperature!r}")
    for k, out in enumerate(outputs):
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"distillation_loss: outputs[{k}] must be a tensor, got {type(out).__name__}")
    for k, out in enumerate(outputs):
        if out.dim() != 2:
            raise ValueError(f"distillation_loss: outputs[{k}] must be logits [B, C], got shape {tuple(out.shape)}")
        if out.shape != outputs[-1].shape:
            raise ValueError(f"distillation_loss: outputs[{k}] has shape {tuple(out.shape)} but the last exit "
                             f"{tuple(outputs[-1].shape)}; every exit needs the same [B, C]")
    t = float(temperature)
    teacher = F.log_softmax(outputs[-1].detach() / t, dim=1)
    total = outputs[-1].new_zeros(())
    for out in outputs[:-1]:
        total = total + t * t * F.kl_div(F.log_softmax(out / t, dim=1), teacher, reduction="batchmean",
                                         log_target=True)
    return total
