"""Pure-PyTorch definitions of eexit's ops: the semantics every fused path is tested against.

Exit rule (csrc/exit_rule.h is its C++ twin): a row leaves when its score passes the threshold:

* criterion "confidence": score = max softmax probability, exits when score >= threshold;
* criterion "entropy": score = softmax entropy in nats, exits when score < threshold (so an
  entropy threshold of 0 lets nothing leave).

Scores are clamped to their ranges (confidence <= 1, entropy >= 0) against rounding.
All arithmetic is float32 whatever the logits' dtype.

Non-finite logits:
  * a row containing NaN scores NaN and never exits; its pred is the first NaN (as torch.argmax);
  * -inf entries have probability 0;
  * a row whose max is +inf (or whose entries are all -inf) is uniform over the k entries equal
    to its max: confidence 1/k, entropy log k (the limit of softmax as those logits grow alike).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from eexit._checks import check_append_args, check_compact_args, check_gate_args
from eexit._layout import memory_format_of


class ExitDecision(NamedTuple):
    """exit_gate's result for logits [N, C].

    exit_idx: int64 [E], rows that exit, ascending.
    keep_idx: int64 [N - E], rows that stay, ascending.
    pred:     int64 [N], argmax per row (first maximal index).
    score:    float32 [N], max probability or entropy (nats), by criterion.
    """

    exit_idx: torch.Tensor
    keep_idx: torch.Tensor
    pred: torch.Tensor
    score: torch.Tensor


def gate_scores(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """float32 [N] score of each row of logits [N, C], clamped to [0, 1] / [0, inf) (see the module
    docstring for non-finite rows; NaN stays NaN)."""
    z = logits.float()
    m = z.amax(dim=1, keepdim=True)
    inf_max = torch.isinf(m)
    d = torch.where(inf_max, torch.where(z == m, 0.0, -torch.inf), z - m)
    e = torch.exp(d)
    s = e.sum(dim=1)
    if criterion == "confidence":
        return (1.0 / s).clamp(max=1.0)
    u = torch.where(e > 0, e * d, 0.0).sum(dim=1)
    return (torch.log(s) - u / s).clamp(min=0.0)


def exits(score: torch.Tensor, threshold: float, criterion: str) -> torch.Tensor:
    """Bool, score's shape: which scores pass the threshold (>= for confidence, < for entropy;
    NaN never does)."""
    return score >= threshold if criterion == "confidence" else score < threshold


def exit_gate(logits: torch.Tensor, threshold: float, criterion: str = "confidence") -> ExitDecision:
    """Reference exit gate: scores, argmax and the split into exiting and staying rows."""
    threshold = check_gate_args(logits, threshold, criterion)
    score = gate_scores(logits, criterion)
    pred = torch.argmax(logits, dim=1)
    passed = exits(score, threshold, criterion)
    return ExitDecision(
        torch.nonzero(passed).squeeze(1), torch.nonzero(~passed).squeeze(1), pred, score
    )


def compact(tensors: Sequence[torch.Tensor], index: torch.Tensor) -> List[torch.Tensor]:
    """Rows `index` (dim 0) of every tensor (all with the same rows); each result keeps its tensor's
    memory format."""
    check_compact_args(tensors, index)
    if index.numel():
        lo, hi = index.min().item(), index.max().item()
        for i, t in enumerate(tensors):
            if lo < 0 or hi >= t.shape[0]:
                raise IndexError(
                    f"compact: index values must be in [0, {t.shape[0]}) for tensors[{i}], got range [{lo}, {hi}]"
                )
    return [t.index_select(0, index).contiguous(memory_format=memory_format_of(t)) for t in tensors]


def append_channels(buf: torch.Tensor, src: torch.Tensor, c0: int, pre: Optional[torch.Tensor] = None,
                    scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None) -> None:
    """Writes src [N, C_src, H, W] into channels [c0, c0 + C_src) of buf [N, C_buf, H, W] (same dtype,
    float32/float16/bfloat16), in place. With ``pre`` [N, c0 + C_src, H, W] (buf's dtype) and float32
    ``scale``, ``shift`` [c0 + C_src], also ``pre = relu(buf[:, :c0 + C_src] * scale + shift)``: the
    next dense layer's folded BatchNorm + ReLU over everything so far, computed in float32 and rounded
    once. NaN propagates (relu(NaN) = NaN). Nothing outside the window of buf is written."""
    check_append_args(buf, src, c0, pre, scale, shift)
    c = c0 + src.shape[1]
    buf[:, c0:c].copy_(src)
    if pre is not None:
        z = buf[:, :c].float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        pre.copy_(torch.relu(z))
