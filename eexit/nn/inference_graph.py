"""A traced stage's eval graph rewritten for inference: each ``nn.Conv2d -> [nn.BatchNorm2d] ->
[ReLU]`` chain becomes one :class:`ConvUnit`, which folds the BatchNorm into the convolution and
runs it with oneDNN's packed weight (:mod:`eexit.nn.packed_conv`) where the input allows.

This gives models cut by :func:`eexit.nn.attach_exits` (plain torchvision-style modules) the same
inference path as eexit's own modules without touching the user's modules or state_dict.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from eexit.nn.execution import ComputePathModule, FoldCache
from eexit.nn.folding import bn_sources, fold_conv_bn
from eexit.nn.packed_conv import PackedConv, packable, packs, run_packed

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


class ConvUnit(nn.Module):
    """``conv`` then ``bn`` (running statistics; optional) then ReLU (when ``relu``), the modules
    shared with the traced model. On input that :func:`~eexit.nn.packed_conv.packs` (channels_last
    float32 CPU), one packed oneDNN convolution with the BatchNorm folded in and the ReLU fused; on
    any other input, or while ``bn`` is in train mode (batch statistics), the modules as the model
    runs them. Inference only."""

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], relu: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = conv, bn, relu
        self._fold = FoldCache()

    def extra_repr(self) -> str:
        return f"relu={self.relu}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if not (packable(conv) and packs(x, conv.weight, conv.bias)) or (bn is not None and bn.training):
            y = conv(x)
            y = y if bn is None else bn(y)
            return y.relu_() if self.relu else y  # y is a fresh tensor, as the traced ReLU's input was
        sources = [t for t in (conv.weight, conv.bias) if t is not None]
        if bn is not None:
            sources += bn_sources(bn)
        unit = self._fold.get("packed", sources, lambda: PackedConv(
            conv, *((conv.weight, conv.bias) if bn is None else fold_conv_bn(conv, bn, torch.float32)), self.relu))
        return run_packed(unit, x)  # x packs: checked above


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu_of(node: Optional[fx.Node], value: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node is None or not node.args or node.args[0] is not value:
        return False
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU and len(node.args) == 1 and not node.kwargs
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and set(node.kwargs) <= {"inplace"} and len(node.args) <= 2
    return node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1 and not node.kwargs


def _is_bn_of(node: Optional[fx.Node], value: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node is None or node.op != "call_module" or node.args != (value,) or node.kwargs:
        return False
    bn = modules.get(node.target)
    return type(bn) is nn.BatchNorm2d and bn.running_mean is not None and bn.running_var is not None


class _Tracer(fx.Tracer):
    """Keeps eexit's own modules as leaves (they have their own inference paths)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ComputePathModule) or super().is_leaf_module(m, qualname)


def _traced(module: nn.Module, n_inputs: int) -> Optional[fx.GraphModule]:
    """module traced (in its current mode) when fx can and its forward takes ``n_inputs`` inputs."""
    try:
        graph = _Tracer().trace(module)
    except Exception:  # noqa: BLE001 - a module fx cannot trace runs as it is
        return None
    if sum(n.op == "placeholder" for n in graph.nodes) != n_inputs:
        return None
    return fx.GraphModule(module, graph, type(module).__name__)


def inference_body(body: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``body`` (sharing its modules) in which every call of an ``nn.Conv2d`` (exactly that
    class, zero padding given as ints) is one :class:`ConvUnit` call, with the ``nn.BatchNorm2d``
    (running statistics) and/or ReLU (module, function or method) that is its only user. Calls of
    other user modules that ``body`` kept whole (the cut modules of :func:`eexit.nn.attach_exits`)
    are traced and rewritten the same way where fx can trace them. ``body`` itself is left as it
    is; run the result in eval mode only (it is built in the modules' current mode)."""
    gm = fx.GraphModule(body, copy.deepcopy(body.graph), "InferenceStage")
    modules = dict(gm.named_modules())
    graph = gm.graph
    for k, node in enumerate(list(graph.nodes)):
        if node.op == "call_module" and not node.kwargs and not _Tracer().is_leaf_module(modules[node.target], ""):
            sub = _traced(modules[node.target], len(node.args))
            if sub is not None:
                name = f"inference{k}"
                gm.add_submodule(name, inference_body(sub))
                node.target = name
            continue
        conv = modules.get(node.target) if node.op == "call_module" else None
        if type(conv) is not nn.Conv2d or not packable(conv) or len(node.args) != 1 or node.kwargs:
            continue
        chain, bn = [node], None
        if _is_bn_of(_only_user(node), node, modules):
            chain.append(_only_user(node))
            bn = modules[chain[-1].target]
        relu = _is_relu_of(_only_user(chain[-1]), chain[-1], modules)
        if relu:
            chain.append(_only_user(chain[-1]))
        name = f"conv_unit{k}"
        gm.add_submodule(name, ConvUnit(conv, bn, relu))
        with graph.inserting_before(node):
            unit = graph.call_module(name, node.args)
        chain[-1].replace_all_uses_with(unit)
        for n in reversed(chain):
            graph.erase_node(n)
    graph.lint()
    gm.recompile()
    return gm
