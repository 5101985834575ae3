"""Cutting a model into early-exit stages on its ``torch.fx`` graph.

The model is traced with the cut modules as leaves, and the graph's nodes (in the order
``forward`` runs them) are split after each cut module's call: stage k holds everything between
cut k-1 and cut k, functional calls included (ReLU, pooling, flatten, residual adds,
concatenations, class tokens, positional embeddings). A value computed before a cut and used
after it travels in the stage's output tuple, after the cut module's output, and is compacted
with it by early exit, so it must be a per-sample tensor [batch, ...]. Values that do not depend
on the input (parameters, buffers, constants and what is computed from them alone) are
recomputed in each stage that uses them instead.

Code that reads ``self.training`` in Python (functional dropout, stochastic depth) is fixed when
tracing, so the model is traced in eval and in train mode; where the two graphs differ a stage
runs the one of its mode (:class:`GraphStage`).
"""
from __future__ import annotations

import bisect
import inspect
import operator
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from eexit.nn.execution import ComputePathModule
from eexit.nn.inference_graph import inference_body

BYPASS = "build the stages yourself: eexit.nn.EarlyExitNetwork(stages, exits)"


class GraphStage(ComputePathModule):
    """One stage cut out of a traced model. ``body`` is the eval-mode graph (a GraphModule sharing
    the model's modules and parameters); in train mode the train-mode graph runs when it differs.

    forward: the previous stage's output (the model's input for stage 0) -> the cut module's
    output, or a tuple whose first element it is, followed by the values that cross the cut.

    Compute paths (:mod:`eexit.nn.execution`): the reference path runs the graph as traced; the
    inference paths run :func:`eexit.nn.inference_graph.inference_body` of it (each Conv2d ->
    BatchNorm2d -> ReLU chain one oneDNN convolution with a packed weight and the BatchNorm folded
    in, on channels_last float32 CPU input), built on first use, outside the module tree: the
    state_dict is the body's on every path.
    """

    def __init__(self, body: fx.GraphModule, train_graph: Optional[fx.Graph] = None, backend: str = "auto") -> None:
        super().__init__(backend)
        self.body = body
        self._train_graph = train_graph
        self._train_body: Optional[fx.GraphModule] = None  # built on first use, over body's modules
        self._infer_body: Optional[fx.GraphModule] = None  # likewise

    def _apply(self, fn, recurse=True):
        self._train_body = self._infer_body = None  # .to() may have replaced buffers that they hold
        return super()._apply(fn, recurse)

    def forward(self, h):
        if self.resolve_path(h if isinstance(h, torch.Tensor) else h[0]) != "reference":
            if self._infer_body is None:  # outside the module tree, as the train body
                self.__dict__["_infer_body"] = inference_body(self.body)
            with torch.no_grad():
                return self._infer_body(h)
        if self.training and self._train_graph is not None:
            if self._train_body is None:  # outside the module tree: state_dict and modules() stay body's
                self.__dict__["_train_body"] = fx.GraphModule(self.body, self._train_graph, "TrainStage")
            return self._train_body(h)
        return self.body(h)


class _CutTracer(fx.Tracer):
    """Keeps the cut modules and eexit's own modules (their forward checks shapes) as leaves."""

    def __init__(self, cuts: Sequence[str]) -> None:
        super().__init__()
        self.cuts = set(cuts)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.cuts or isinstance(m, ComputePathModule) or super().is_leaf_module(m, qualname)


def _user_frame(err: BaseException) -> str:
    """Where a tracing error arose in the user's code: 'file:line in function: code'."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()})"


def _trace(model: nn.Module, cuts: Sequence[str], training: bool) -> fx.Graph:
    """The graph of model.forward in the given mode, the cut modules as single calls."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
    if len(params) - 1 > len(concrete):
        raise ValueError(f"attach_exits: {type(model).__name__}.forward takes more than one input without "
                         f"a default; {BYPASS}")
    model.train(training)
    try:
        return _CutTracer(cuts).trace(model, concrete_args=concrete or None)
    except Exception as err:
        raise ValueError(f"attach_exits: torch.fx cannot trace {type(model).__name__}: "
                         f"{type(err).__name__}: {err}{_user_frame(err)}; {BYPASS}") from err


def _dynamic_nodes(graph: fx.Graph) -> set:
    """The nodes whose value depends on the model's input."""
    dynamic: set = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dynamic for a in node.all_input_nodes):
            dynamic.add(node)
    return dynamic


def _cut_nodes(graph: fx.Graph, cuts: Sequence[str]) -> List[fx.Node]:
    calls: Dict[str, List[fx.Node]] = {c: [] for c in cuts}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in calls:
            calls[node.target].append(node)
    for name, nodes in calls.items():
        if len(nodes) != 1:
            raise ValueError(f"after: {name!r} is called {len(nodes)} times in forward; a cut must be a module "
                             "called exactly once")
    found = [calls[c][0] for c in cuts]
    order = {n: i for i, n in enumerate(graph.nodes)}
    if [order[n] for n in found] != sorted(order[n] for n in found):
        ran = sorted(cuts, key=lambda c: order[calls[c][0]])
        raise ValueError(f"after must list the cuts in the order forward runs them: {ran}, got {list(cuts)}")
    return found


def _split(graph: fx.Graph, cuts: Sequence[str]) -> Tuple[List[fx.Graph], List[List[str]]]:
    """The stage graphs, and for each cut the names of the values that cross it (the cut module's
    output first)."""
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    cut_nodes = _cut_nodes(graph, cuts)
    cut_pos = [pos[n] for n in cut_nodes]
    dynamic = _dynamic_nodes(graph)
    last = len(cut_nodes)

    def stage_of(node: fx.Node) -> int:
        return last if node.op == "output" else bisect.bisect_left(cut_pos, pos[node])

    crossing: List[List[fx.Node]] = []
    for k, cut in enumerate(cut_nodes):
        later = [n for n in nodes if n in dynamic and n is not cut and stage_of(n) <= k
                 and any(stage_of(u) > k for u in n.users)]
        crossing.append([cut] + later)

    graphs = []
    for k in range(last + 1):
        g = fx.Graph()
        env: Dict[fx.Node, fx.Node] = {}
        if k > 0:
            h = g.placeholder("h")
            incoming = crossing[k - 1]
            for i, n in enumerate(incoming):
                env[n] = h if len(incoming) == 1 else g.call_function(operator.getitem, (h, i))

        def lookup(n: fx.Node) -> fx.Node:
            if n not in env:  # a value that does not depend on the input: recomputed here
                env[n] = g.node_copy(n, lookup)
            return env[n]

        for n in nodes:
            if n in dynamic and n.op != "output" and stage_of(n) == k:
                env[n] = g.node_copy(n, lookup)
        if k == last:
            out = next(n for n in reversed(nodes) if n.op == "output")
            g.output(fx.node.map_arg(out.args[0], lookup))
        else:
            outs = [lookup(n) for n in crossing[k]]
            g.output(outs[0] if len(outs) == 1 else tuple(outs))
        g.lint()
        graphs.append(g)
    return graphs, [[n.name for n in c] for c in crossing]


def cut_stages(model: nn.Module, cuts: Sequence[str]) -> Tuple[List[GraphStage], List[List[str]]]:
    """``model`` cut into ``len(cuts) + 1`` :class:`GraphStage` s after the named submodules (dotted
    names, in the order forward calls them, each called once); and for each cut the names of the
    graph values that cross it, the cut module's output first. The stages share the model's
    modules. ValueError when torch.fx cannot trace the model. Leaves every module's training flag
    as it found it."""
    modes = {m: m.training for m in model.modules()}
    try:
        eval_graph, train_graph = _trace(model, cuts, False), _trace(model, cuts, True)
    finally:
        for m, mode in modes.items():
            m.training = mode
    eval_stages, crossing = _split(eval_graph, cuts)
    same = eval_graph.python_code("self").src == train_graph.python_code("self").src
    train_stages = [None] * len(eval_stages) if same else _split(train_graph, cuts)[0]
    stages = []
    for k, (ge, gt) in enumerate(zip(eval_stages, train_stages)):
        body = fx.GraphModule(model, ge, f"Stage{k}")
        if gt is not None:
            for node in gt.nodes:
                if node.op in ("get_attr", "call_module"):
                    _install(model, body, node.target)
        stages.append(GraphStage(body, gt))
    for stage in stages:  # in the model's mode, leaving the model's own modules as they are
        stage.training = stage.body.training = model.training
    return stages, crossing


def _install(root: nn.Module, body: nn.Module, target: str) -> None:
    """Makes root's attribute ``target`` (dotted) reachable in body, the same object."""
    *path, field = target.split(".")
    src, dst = root, body
    for name in path:
        src = getattr(src, name)
        if not hasattr(dst, name):
            dst.add_module(name, nn.Module())
        dst = getattr(dst, name)
    if not hasattr(dst, field):
        value = getattr(src, field)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            dst.register_buffer(field, value)
        else:
            setattr(dst, field, value)
