"""Early exits for any backbone: a network as stages and exits, run with real early exit."""
from __future__ import annotations

import difflib
import operator
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from eexit import ops, reference
from eexit._checks import PARAMETERS, check_input_spec, check_model_input
from eexit.nn.execution import BACKENDS, check_backend, check_gate_ops, set_backend
from eexit.nn.graph_cuts import BYPASS, cut_stages
from eexit.nn.heads import TOKEN_POOLS, CutExit, default_head
from eexit.runner import EarlyExitOutput, Thresholds, run_all_exits, run_early_exit


def _first_parameter(module: nn.Module) -> Optional[nn.Parameter]:
    """``next(module.parameters(), None)`` (the first stage's first parameter, as modules register
    stages first), at a sixth of its cost: it runs on every forward and infer."""
    for p in module._parameters.values():
        if p is not None:
            return p
    for child in module._modules.values():
        p = None if child is None else _first_parameter(child)
        if p is not None:
            return p
    return None


class EarlyExitModel(nn.Module):
    """Base of networks with exits. Subclasses provide :meth:`exit_stages`: ``stages[k]`` maps
    stage k-1's output (the input for k = 0) to its own (a tensor or a list/tuple of tensors);
    ``exits[k]`` maps stage k's output to logits [B, C]; the last exit is the final classifier.

    ``forward(x)`` returns every exit's logits (training, and the dense evaluation);
    ``infer(x, thresholds, criterion)`` runs real early exit (see :mod:`eexit.runner`) with the
    gate ops named by ``gate_ops``: "fused" (:mod:`eexit.ops`) or "reference" (:mod:`eexit.reference`).
    ``backend`` (constructor, :meth:`set_backend`) sets gate_ops and the compute path of every eexit
    module inside (:mod:`eexit.nn.execution`).

    Both check ``x`` first (:meth:`check_input`) against what the model declares it takes:
    ``input_shape`` (per sample, without the batch dimension: an int where the size is fixed, None
    where any size goes; None: not known), ``input_dtype`` (None: floating input must have the
    parameters' dtype, other dtypes pass; ``"parameters"``: the parameters' dtype whatever x is; or a
    torch.dtype) and ``display_name`` (how messages name the model; default the class name).
    """

    input_shape: Optional[Tuple[Optional[int], ...]] = None
    input_dtype: Union[None, str, torch.dtype] = None
    display_name: Optional[str] = None

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.gate_ops = BACKENDS[check_backend(backend)][1]
        self.compiled_parts: Optional[Tuple[list, list]] = None  # set by eexit.compile
        self.compiled_steps: Optional[list] = None  # eexit.compile(gate="inside"): stage+exit+gate graphs
        self.compile_seconds: Optional[float] = None

    def declare_input(self, shape: Optional[Sequence[Optional[int]]] = None,
                      dtype: Union[None, str, torch.dtype] = None, name: Optional[str] = None) -> None:
        """Sets ``input_shape`` (per sample; a tuple of ints >= 1 or None for any size, or None),
        ``input_dtype`` and ``display_name`` (see the class docstring); ValueError for a bad one."""
        check_input_spec(shape, dtype)
        self.input_shape = None if shape is None else tuple(shape)
        self.input_dtype = dtype
        self.display_name = name

    def check_input(self, x) -> None:
        """What ``forward`` and ``infer`` do first, before anything runs: TypeError unless x is a
        tensor (or, when ``input_shape`` is not known, a non-empty list/tuple of tensors: a
        multi-scale input), ValueError when its shape is not ``[B, *input_shape]`` (a single tensor
        then) or its device is not the parameters', TypeError when its dtype is not the one declared
        (``input_dtype``; floating input always needs the parameters' dtype, except under autocast).
        Reads metadata only: no tensor op, no device sync."""
        check_model_input(x, f"this {self.display_name or type(self).__name__}", self.input_shape,
                          self.input_dtype, _first_parameter(self))

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
        """(stages, exits), as many of each; see the class docstring."""
        raise NotImplementedError

    def forward(self, x) -> List[torch.Tensor]:
        self.check_input(x)
        return run_all_exits(*self.running_stages(), x)

    @torch.no_grad()
    def infer(self, x, thresholds: Thresholds, criterion: str = "confidence") -> EarlyExitOutput:
        """Real early exit; ``thresholds`` one per exit or one for all (the last exit takes
        everyone left). Needs eval mode (RuntimeError otherwise: in train mode BatchNorm would mix
        the samples of the batch and update its running statistics); x is checked as in
        :meth:`check_input`. A refused call changes nothing."""
        if self.training:
            raise RuntimeError("infer needs eval mode: call model.eval() first; in train mode BatchNorm would mix "
                               "samples and update its statistics")
        self.check_input(x)
        stages, exits = self.running_stages()
        gate = {"fused": ops, "reference": reference}[check_gate_ops(self.gate_ops)]
        steps = self.compiled_steps if gate is ops and self.compiled_parts is not None else None
        return run_early_exit(stages, exits, x, thresholds, criterion, gate=gate, steps=steps)


class EarlyExitNetwork(EarlyExitModel):
    """An :class:`EarlyExitModel` from explicit lists of stages and exits (any nn.Modules).

    What the first stage takes is not known unless declared (see :class:`EarlyExitModel`):
    ``input_shape`` per sample, e.g. ``(3, None, None)`` for 3-channel images of any size or
    ``(3, 32, 32)``; ``input_dtype`` (e.g. ``torch.int64`` for token ids); ``display_name`` for
    messages. Undeclared, forward and infer take a tensor or a non-empty list/tuple of tensors
    (a multi-scale input) with the samples on dim 0, floating ones in the parameters' dtype.
    """

    def __init__(self, stages: Sequence[nn.Module], exits: Sequence[nn.Module], backend: str = "auto", *,
                 input_shape: Optional[Sequence[Optional[int]]] = None,
                 input_dtype: Union[None, str, torch.dtype] = None, display_name: Optional[str] = None) -> None:
        super().__init__(backend)
        if len(stages) != len(exits) or not stages:
            raise ValueError(f"stages and exits must be non-empty and as many, got {len(stages)} and {len(exits)}")
        self.declare_input(input_shape, input_dtype, display_name)
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)

    def exit_stages(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        return list(self.stages), list(self.exits)


def _check_cuts(model: nn.Module, after: Sequence[str]) -> List[str]:
    if isinstance(after, str) or not isinstance(after, Sequence) or not after:
        raise ValueError(f"after must be a non-empty list of module names, got {after!r}")
    names = [n for n, _ in model.named_modules() if n]
    for a in after:
        if not isinstance(a, str) or a not in names:
            near = difflib.get_close_matches(str(a), names, n=5)
            top = [n for n, _ in model.named_children()]
            hint = f"; did you mean {near}?" if near else f"; the model's top-level modules are {top}"
            raise ValueError(f"after: {a!r} is not a submodule of {type(model).__name__}{hint}")
    if len(set(after)) != len(after):
        raise ValueError(f"after names a module twice: {list(after)}")
    return list(after)


def _tolerance(t: torch.Tensor) -> dict:
    """How far the cut network may differ from the model: float rounding only (the same ops run)."""
    low = t.dtype in (torch.float16, torch.bfloat16)
    return dict(rtol=1e-2 if low else 1e-4, atol=(1e-2 if low else 1e-5) * max(1.0, float(t.abs().max())),
                equal_nan=True)


def _check_crossing(h, names: List[str], cut: str, n: int) -> torch.Tensor:
    """The cut module's output from stage output h; ValueError unless everything in h is [n, ...]."""
    values = list(h) if len(names) > 1 else [h]
    for i, (name, v) in enumerate(zip(names, values)):
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n:
            what = f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"a {type(v).__name__}"
            value = f"the output of {cut!r}" if i == 0 else f"{name!r} (computed before {cut!r}, used after it)"
            raise ValueError(f"after: {value} is {what}, not a per-sample tensor [{n}, ...]; early exit compacts "
                             f"the batch at every cut, so only such tensors can cross one: cut elsewhere, or {BYPASS}")
    return values[0]


def _check_same(net: "EarlyExitNetwork", model: nn.Module, x: torch.Tensor, after: List[str],
                features: List[torch.Tensor], num_classes: int) -> None:
    """ValueError naming the first cut where the network departs from the model on x (eval mode)."""
    seen: List[torch.Tensor] = []
    hooks = [model.get_submodule(a).register_forward_hook(lambda m, i, o: seen.append(o)) for a in after]
    try:
        want = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(want, torch.Tensor) or want.dim() != 2 or want.shape[0] != x.shape[0]:
        raise ValueError(f"attach_exits: the model must return logits [B, classes], it returned "
                         f"{tuple(want.shape) if isinstance(want, torch.Tensor) else type(want).__name__}")
    if want.shape[1] != num_classes:
        raise ValueError(f"num_classes is {num_classes} but the model returns {want.shape[1]} classes")
    for a, got, ref in zip(after, features, seen):
        if got.shape != ref.shape or not torch.allclose(got, ref, **_tolerance(ref)):
            raise ValueError(f"attach_exits: the network cut at {a!r} computes something else than the model "
                             f"before that cut (on example_input); {BYPASS}")
    got = net(x)[-1]
    if got.shape != want.shape or not torch.allclose(got, want, **_tolerance(want)):
        raise ValueError(f"attach_exits: the network's last exit differs from the model's output after the last "
                         f"cut {after[-1]!r} (on example_input); {BYPASS}")


def _example_spec(model: nn.Module, example: torch.Tensor) -> dict:
    """What the network declares it takes, from example_input: its rank, and for floating input its
    channels (dim 1) in the parameters' dtype; other sizes stay free (whether the model fixes them is
    not worked out). Non-floating input (token ids [B, L]) keeps its dtype, and dim 1 (a length) is free."""
    shape: List[Optional[int]] = [None] * (example.dim() - 1)
    if example.is_floating_point() and shape:
        shape[0] = example.shape[1]
    return dict(input_shape=tuple(shape), input_dtype=PARAMETERS if example.is_floating_point() else example.dtype,
                display_name=f"{type(model).__name__} with exits")


def attach_exits(model: nn.Module, after: Sequence[str], num_classes: int, example_input: torch.Tensor,
                 head: Optional[Callable[[torch.Tensor, int], nn.Module]] = None,
                 tokens: str = "cls") -> EarlyExitNetwork:
    """Cuts ``model`` into stages after the modules named in ``after`` (dotted names such as
    ``"layer2.1"`` or ``"features.denseblock2"``, in the order forward calls them) on its torch.fx
    graph (see :mod:`eexit.nn.graph_cuts`: everything forward does between modules is kept) and
    attaches an exit head at each cut; the rest of the model is the last stage and its output the
    last exit. The network shares the model's modules and parameters; ``network.backbone`` is the
    model.

    head(feature, num_classes) builds each exit from the cut module's example output ``feature``
    (default :func:`~eexit.nn.heads.default_head`: feature maps -> pool + Linear, tokens [B, L, D]
    -> class token (``tokens="cls"``) or token mean (``"mean"``) + LayerNorm + Linear, vectors ->
    Linear, in the feature's dtype); heads are moved to the feature's device. ``example_input`` is a batch the model
    takes, e.g. ``torch.zeros(1, 3, 32, 32)`` (a batch of one is run as two, to tell the batch
    dimension).

    The result is checked before it is returned: in eval mode and without grad, example_input runs
    through the network and the model, and ValueError names the cut where they differ beyond float
    rounding. Every module's training flag is left as it was. The network declares the input it takes
    (see :class:`EarlyExitModel`) from example_input: its rank and, for floating input, its channels
    (dim 1) and the parameters' dtype; other sizes are free (a non-floating example keeps its dtype
    and leaves dim 1 free). Models torch.fx cannot trace, and
    values crossing a cut that are not per-sample tensors, are refused with ValueError (then build
    :class:`EarlyExitNetwork` from your own stages and exits).
    """
    after = _check_cuts(model, after)
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0 or example_input.shape[0] < 1:
        raise ValueError("example_input must be a tensor batch of at least one sample the model takes, e.g. "
                         "torch.zeros(1, 3, 32, 32)")
    if tokens not in TOKEN_POOLS:
        raise ValueError(f"tokens must be one of {TOKEN_POOLS}, got {tokens!r}")
    stages, crossing = cut_stages(model, after)
    if not any(n.op in ("call_module", "call_function", "call_method") and n.target is not operator.getitem
               for n in stages[-1].body.graph.nodes):
        raise ValueError(f"after: nothing of the model is left after {after[-1]!r} to be the final exit")
    x = example_input if example_input.shape[0] > 1 else torch.cat([example_input] * 2)
    modes = {m: m.training for m in model.modules()}
    try:
        for m in [model, *stages]:
            m.eval()
        with torch.no_grad():
            features, h = [], x
            for k, stage in enumerate(stages[:-1]):
                h = stage(h)
                features.append(_check_crossing(h, crossing[k], after[k], x.shape[0]))
            exits: List[nn.Module] = []
            for f in features:
                if head is None:
                    e = default_head(f, num_classes, tokens).to(f.device, f.dtype)
                else:
                    e = head(f, num_classes)
                    if not isinstance(e, nn.Module):
                        raise ValueError(f"head must return an nn.Module, returned a {type(e).__name__}")
                exits.append(CutExit(e.to(f.device)))
            net = EarlyExitNetwork(stages, exits + [nn.Identity()], **_example_spec(model, example_input)).eval()
            _check_same(net, model, x, after, features, num_classes)
        net.train(modes[model])  # the heads and stages in the model's mode; its own modules are restored below
    finally:
        for m, mode in modes.items():
            m.training = mode
    object.__setattr__(net, "backbone", model)  # the model itself, outside the module tree
    return net
