"""Per-exit compute costs (multiply-adds) in the counting convention of the official MSDNet code.

Convention (kalviny/MSDNet-PyTorch, ``op_counter.py``), one sample:

* Conv2d: ``in * out * kh * kw * H_out * W_out / groups`` (bias not counted);
* Linear: ``weight.numel() + bias.numel()``;
* ReLU: input elements (so are Hardswish and Hardsigmoid, MobileNetV3's activations, which the
  official counter has no rule for); MaxPool2d / AvgPool2d: output elements * kernel area;
  AdaptiveAvgPool2d: input elements; LocalResponseNorm (not in the official counter, which has
  none): input elements * window size;
* BatchNorm, Dropout, Identity, Flatten, containers: 0. Any other leaf module raises TypeError.

The official counter runs one forward on a zero image and reads its running total each time an
``nn.Linear`` finishes, so exit k's figure covers blocks 1..k *and classifiers 1..k*.
Results are in multiply-adds (divide by 1e6 for the papers' "MFLOPs").
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence, Tuple, Union

import torch
from torch import nn

from eexit.nn.execution import restoring_backends, set_compute_path

InputSize = Union[int, Sequence[int]]
_FREE = (nn.modules.batchnorm._NormBase, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
         nn.Sequential, nn.ModuleList)  # the last two only when empty


def leaf_ops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Multiply-adds of one leaf module for input x and output y (official convention)."""
    if isinstance(module, nn.Conv2d):
        return float(module.weight.numel() * y.shape[2] * y.shape[3] * y.shape[0])
    if isinstance(module, nn.Linear):
        rows = x.numel() // module.in_features
        return float(rows * (module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)))
    if isinstance(module, (nn.ReLU, nn.Hardswish, nn.Hardsigmoid, nn.AdaptiveAvgPool2d)):
        return float(x.numel())
    if isinstance(module, nn.LocalResponseNorm):
        return float(x.numel() * module.size)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size
        kh, kw = (k, k) if isinstance(k, int) else k
        return float(y.numel() * kh * kw)
    if isinstance(module, _FREE):
        return 0.0
    raise TypeError(f"flops: no counting rule for leaf module {type(module).__name__}")


class _Counter:
    """Forward hooks on every leaf module under ``roots``: a running total of multiply-adds."""

    def __init__(self) -> None:
        self.total = 0.0
        self.snapshots: List[float] = []  # the total after each nn.Linear (the official exit marks)

    @contextlib.contextmanager
    def attach(self, roots: Sequence[nn.Module]) -> Iterator["_Counter"]:
        leaves = {id(m): m for r in roots for m in r.modules() if next(m.children(), None) is None}
        handles = [m.register_forward_hook(self._hook) for m in leaves.values()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, module: nn.Module, inputs, output) -> None:
        self.total += leaf_ops(module, inputs[0], output)
        if isinstance(module, nn.Linear):
            self.snapshots.append(self.total)


@contextlib.contextmanager
def _counting_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, reference compute path (the others bypass the leaf modules) and no grad;
    restores every module's training flag and settings afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with restoring_backends(model), torch.no_grad():
            model.eval()
            set_compute_path(model, "reference")
            yield
    finally:
        for m, training in modes:
            m.training = training


def _dummy(model: nn.Module, input_size: InputSize) -> torch.Tensor:
    """A zero batch of one: input_size is S (3 x S x S), (H, W) (3 channels) or (C, H, W)."""
    size = [3, input_size, input_size] if isinstance(input_size, int) else list(input_size)
    if len(size) == 2:
        size = [3] + size
    if len(size) != 3 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"flops: input_size must be S, (H, W) or (C, H, W) positive ints, got {input_size!r}")
    p = next(model.parameters(), None)
    return torch.zeros([1] + size, device=p.device if p is not None else "cpu",
                       dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)


def exit_costs(model: nn.Module, input_size: InputSize) -> List[float]:
    """Cumulative multiply-adds at each exit, as the official ``op_counter.measure_model``:
    one ``model(x)`` on a zero image of one sample, the running total read after each ``nn.Linear``
    (so exit k includes every block and classifier up to k). Training flags and backends are restored.
    """
    counter = _Counter()
    x = _dummy(model, input_size)
    with _counting_mode(model), counter.attach([model]):
        model(x)
    return counter.snapshots


def stage_costs(model: nn.Module, input_size: InputSize) -> Tuple[List[float], List[float]]:
    """(stage costs, exit-head costs), not cumulative: multiply-adds of each stage and each head of
    ``model.exit_stages()``, run one after the other on a zero image of one sample."""
    if not hasattr(model, "exit_stages"):
        raise TypeError(f"flops: {type(model).__name__} has no exit_stages()")
    stages, heads = model.exit_stages()
    counter = _Counter()
    feats = _dummy(model, input_size)
    s_costs, h_costs = [], []
    with _counting_mode(model), counter.attach(list(stages) + list(heads)):
        for stage, head in zip(stages, heads):
            start = counter.total
            feats = stage(feats)
            s_costs.append(counter.total - start)
            start = counter.total
            head(feats)
            h_costs.append(counter.total - start)
    return s_costs, h_costs


def actual_exit_costs(model: nn.Module, input_size: InputSize) -> List[float]:
    """What real early exit pays for a sample that leaves at exit k: stages 1..k plus heads 1..k
    (every earlier head ran to decide that the sample stays), from :func:`stage_costs`.

    For MSDNet this coincides with :func:`exit_costs`: the official counter's total is cumulative
    over a forward that runs block 1, classifier 1, block 2, ... and is read after each classifier,
    so it already includes the earlier classifiers. The two would differ for a model whose heads
    hold several Linear layers or run out of that order. Neither counts the exit gate itself
    (softmax and threshold, about 3 * num_classes operations per exit) nor BatchNorm.
    """
    s_costs, h_costs = stage_costs(model, input_size)
    out, total = [], 0.0
    for s, h in zip(s_costs, h_costs):
        total += s + h
        out.append(total)
    return out


def expected_cost(exit_counts: Sequence[float], costs: Sequence[float]) -> float:
    """Average cost per sample, ``sum_k n_k * costs[k] / sum_k n_k``, where ``exit_counts[k]`` samples
    (or a fraction of them) left at exit k and ``costs[k]`` is what a sample leaving there pays
    (:func:`actual_exit_costs`)."""
    counts = [float(c) for c in (exit_counts.tolist() if isinstance(exit_counts, torch.Tensor) else exit_counts)]
    costs = [float(c) for c in (costs.tolist() if isinstance(costs, torch.Tensor) else costs)]
    if len(counts) != len(costs):
        raise ValueError(f"expected_cost: {len(counts)} exit counts for {len(costs)} exits")
    if any(c < 0 for c in counts) or sum(counts) <= 0:
        raise ValueError(f"expected_cost: exit counts must be >= 0 with a positive sum, got {counts}")
    return sum(n * c for n, c in zip(counts, costs)) / sum(counts)
