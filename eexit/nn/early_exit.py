"""Early exits for any backbone: a network as stages and exits, run with real early exit."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from eexit import ops, reference
from eexit.nn.execution import BACKENDS, check_backend, check_gate_ops, set_backend
from eexit.runner import EarlyExitOutput, Thresholds, run_all_exits, run_early_exit


class EarlyExitModel(nn.Module):
    """Base of networks with exits. Subclasses provide :meth:`exit_stages`: ``stages[k]`` maps
    stage k-1's output (the input for k = 0) to its own (a tensor or a list/tuple of tensors);
    ``exits[k]`` maps stage k's output to logits [B, C]; the last exit is the final classifier.

    ``forward(x)`` returns every exit's logits (training, and the dense evaluation);
    ``infer(x, thresholds, criterion)`` runs real early exit (see :mod:`eexit.runner`) with the
    gate ops named by ``gate_ops``: "fused" (:mod:`eexit.ops`) or "reference" (:mod:`eexit.reference`).
    ``backend`` (constructor, :meth:`set_backend`) sets gate_ops and the compute path of every eexit
    module inside (:mod:`eexit.nn.execution`).
    """

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.gate_ops = BACKENDS[check_backend(backend)][1]
        self.compiled_parts: Optional[Tuple[list, list]] = None  # set by eexit.compile
        self.compile_seconds: Optional[float] = None

    def running_stages(self) -> Tuple[list, list]:
        """(stages, exits) as forward and infer run them: the compiled ones after
        :func:`eexit.compile`, else :meth:`exit_stages`."""
        return self.compiled_parts if self.compiled_parts is not None else self.exit_stages()

    def set_backend(self, backend: str) -> "EarlyExitModel":
        """:func:`eexit.nn.set_backend` on this model and every eexit module inside it."""
        return set_backend(self, backend)

    def extra_repr(self) -> str:
        return f"gate_ops={self.gate_ops!r}"

    def exit_stages(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        raise NotImplementedError

    def forward(self, x) -> List[torch.Tensor]:
        return run_all_exits(*self.running_stages(), x)

    @torch.no_grad()
    def infer(self, x, thresholds: Thresholds, criterion: str = "confidence") -> EarlyExitOutput:
        """Real early exit; ``thresholds`` one per exit or one for all (the last exit takes
        everyone left). Call ``.eval()`` first: in train mode BatchNorm mixes samples."""
        stages, exits = self.running_stages()
        gate = {"fused": ops, "reference": reference}[check_gate_ops(self.gate_ops)]
        return run_early_exit(stages, exits, x, thresholds, criterion, gate=gate)


class EarlyExitNetwork(EarlyExitModel):
    """An :class:`EarlyExitModel` from explicit lists of stages and exits (any nn.Modules)."""

    def __init__(self, stages: Sequence[nn.Module], exits: Sequence[nn.Module], backend: str = "auto") -> None:
        super().__init__(backend)
        if len(stages) != len(exits) or not stages:
            raise ValueError(f"stages and exits must be non-empty and as many, got {len(stages)} and {len(exits)}")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)

    def exit_stages(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        return list(self.stages), list(self.exits)


class Chain(nn.Sequential):
    """nn.Sequential that flattens a feature map before a Linear (the ``torch.flatten(x, 1)``
    that torchvision-style forward() methods do between pooling and the classifier)."""

    def forward(self, x):
        for m in self:
            if isinstance(m, nn.Linear) and x.dim() > 2:
                x = torch.flatten(x, 1)
            x = m(x)
        return x


def pool_linear_head(channels: int, num_classes: int) -> nn.Module:
    """The default exit head: global average pooling -> Linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def attach_exits(model: nn.Module, after: Sequence[str], num_classes: int, example_input: torch.Tensor,
                 head: Optional[Callable[[int, int], nn.Module]] = None) -> EarlyExitNetwork:
    """Cuts ``model`` into stages after the named direct children ``after`` (in order) and
    attaches an exit head at each cut; the model's own remaining layers are the last stage and
    its output the last exit. Children run in registration order, with a flatten before a
    Linear that gets a feature map, as torchvision-style models do.

    head(channels, num_classes) builds each exit (default: pool -> linear); channels is found by
    running ``example_input`` (e.g. ``torch.zeros(1, 3, 32, 32)``) through the stages.
    The new network shares the model's modules (and parameters).
    """
    names = [n for n, _ in model.named_children()]
    missing = [a for a in after if a not in names]
    if missing:
        raise ValueError(f"after: {missing} are not direct children of the model; children are {names}")
    cuts = [names.index(a) for a in after]
    if cuts != sorted(cuts) or len(set(cuts)) != len(cuts) or not cuts:
        raise ValueError(f"after must name distinct children in model order, got {list(after)}")
    if cuts[-1] == len(names) - 1:
        raise ValueError(f"after: nothing of the model is left after {after[-1]!r} to be the final exit")
    children = [m for _, m in model.named_children()]
    bounds = [0] + [c + 1 for c in cuts] + [len(children)]
    stages = [Chain(*children[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    head = head or pool_linear_head
    exits: List[nn.Module] = []
    with torch.no_grad():
        was_training = model.training
        model.eval()
        h = example_input
        for stage in stages[:-1]:
            h = stage(h)
            if h.dim() < 2:
                raise ValueError(f"stage output of shape {tuple(h.shape)} has no channel dimension")
            exits.append(head(h.shape[1], num_classes))
        model.train(was_training)
    exits.append(nn.Identity())
    return EarlyExitNetwork(stages, exits)
