"""The plain-PyTorch code a user writes for an exit gate: what the fused op replaces."""
import torch


def gate_composite(logits: torch.Tensor, threshold: float, criterion: str):
    """softmax, max, entropy, compare, nonzero: (exit_idx, keep_idx, pred, score)."""
    p = torch.softmax(logits.float(), dim=1)
    conf, pred = p.max(dim=1)
    if criterion == "confidence":
        score, passed = conf, conf >= threshold
    else:
        score = torch.special.entr(p).sum(dim=1)
        passed = score < threshold
    return passed.nonzero().squeeze(1), (~passed).nonzero().squeeze(1), pred, score
