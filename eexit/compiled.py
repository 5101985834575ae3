"""Compiled early-exit inference: every stage and exit of an :class:`~eexit.nn.EarlyExitModel`
under ``torch.compile``, with the batch dimension dynamic, so that the shrinking active batch of
real early exit does not recompile; the exit gate and compaction run between the compiled graphs
(eexit's ops, the model's ``gate_ops``).

With ``buckets`` (and ``cuda_graphs=True`` on CUDA) the active batch is padded to bucketed sizes
and each (part, bucket) replays a captured CUDA graph: see :mod:`eexit.bucketed` for the trade-off.

Compiled artifacts are cached on disk by Inductor (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER``): a second process with the same model and torch reuses them and
warms up much faster. Delete that folder to clear it.
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional, Sequence

import torch
from torch import nn

from eexit.bucketed import DEFAULT_BUCKETS, BucketedPart, check_buckets
from eexit.nn.early_exit import EarlyExitModel
from eexit.nn.execution import ComputePathModule
from eexit.runner import gated_step


def _tensors(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


# Batch sizes after which torch's graphs differ: sizes 0 and 1 are specialised, and the choice of CPU
# convolution backend (so the output layout) changes at 16 samples (ATen's ConvParams::use_mkldnn).
# One warm-up batch in each range compiles every graph infer will need.
WARMUP_BATCHES = (1, 2, 16)
#: The places of the exit gate and the compaction, between the compiled graphs or inside them.
GATE_PLACES = ("between", "inside")


def _rows(x: Any, n: int) -> Any:
    """n samples of x (a tensor or a list of them), repeated as needed, as new tensors (made under
    the caller's grad mode)."""
    idx = torch.arange(n, device=_tensors(x)[0].device) % _tensors(x)[0].shape[0]
    return x.index_select(0, idx) if isinstance(x, torch.Tensor) else [t.index_select(0, idx) for t in x]


class CompiledPart:
    """A stage or exit under ``torch.compile``. Its input's batch dimension is marked dynamic on
    every call, so a few graphs serve every batch size (see ``WARMUP_BATCHES``; an empty batch
    runs the module eagerly). Not an nn.Module: the model's parameters and state_dict stay where
    they are."""

    def __init__(self, module: nn.Module, options: dict) -> None:
        self.module = module
        self.compiled = torch.compile(module, **options)

    def __call__(self, x, *args):
        tensors = _tensors(x)
        n = tensors[0].shape[0]
        if n == 0:
            return self.module(x, *args)
        if n > 1:
            for t in tensors:
                torch._dynamo.mark_dynamic(t, 0)
        return self.compiled(x, *args)


class GatedStep(nn.Module):
    """Stage k, exit k, eexit's exit gate and the compaction (:func:`eexit.runner.gated_step`) as
    one module, so that ``torch.compile`` takes the gate inside the graph (``gate="inside"``)."""

    def __init__(self, stage: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stage, self.head = stage, head

    def forward(self, h, threshold: float, criterion: str):
        return gated_step(self.stage, self.head, h, threshold, criterion)


def _allow_graphs(parts: int) -> None:
    """Raises torch's per-function graph limit (``torch._dynamo.config.recompile_limit``, 8 by
    default) to what ``parts`` compiled modules need: instances of one class share a forward
    function, each instance with its graphs per warm-up size and kind of input tensor (normal under
    no_grad, normal or inference tensor under inference_mode). Past the limit torch would silently
    run the extra modules eagerly."""
    cfg = torch._dynamo.config
    needed = parts * len(WARMUP_BATCHES) * 3
    cfg.recompile_limit = max(cfg.recompile_limit, needed)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * needed)


def compile(model: EarlyExitModel, *, example_input: Optional[Any] = None, gate: str = "between",
            buckets: Optional[Sequence[int]] = None, cuda_graphs: bool = False, **options) -> EarlyExitModel:
    """Compiles every stage and exit of ``model`` (any :class:`~eexit.nn.EarlyExitModel`: MSDNet,
    BranchyNet, :class:`~eexit.nn.EarlyExitNetwork`, :func:`~eexit.nn.attach_exits` results) for
    ``forward`` and ``infer``; returns the same model.

    The conv modules are set to the reference compute path (Inductor sees plain convolutions,
    BatchNorm and concatenations); modules whose inference path is one eexit op that Inductor
    cannot beat (``compiled_as_op``: :class:`~eexit.nn.LocalResponseNorm`, and
    :class:`~eexit.nn.Conv2d` layers of at most ``DIRECT_MAX_TAPS`` taps, direct at every batch
    size) keep theirs, the op staying one call in the graph. ``options`` go to ``torch.compile``
    (``dynamic`` is not accepted: the batch dimension is dynamic, every other one static). With ``example_input``
    (a batch as ``forward`` takes it; its samples are repeated or cut to the sizes of
    ``WARMUP_BATCHES``) the graphs ``infer`` runs are compiled at once, under ``torch.no_grad()``
    and under ``torch.inference_mode()`` with a normal and with an inference tensor (their tensors
    differ, so each has its graphs; Inductor's cache makes the repeats cheap), and the time it
    took is ``model.compile_seconds``; after that no batch size recompiles. Otherwise each graph
    compiles on first use. :func:`uncompile` undoes it.

    ``gate="between"`` (the default) runs eexit's gate and compaction between the compiled graphs;
    ``gate="inside"`` compiles each stage with its exit, the gate and the compaction as one graph
    (:class:`GatedStep`, used by ``infer`` with ``gate_ops="fused"``; the gate's data-dependent
    sizes become unbacked sizes in the graph). torch specialises the gate's threshold and
    criterion, so those graphs compile at the first ``infer`` with each threshold and criterion
    (and kind of input tensor), not in the warm-up; later batch sizes reuse them.

    ``buckets`` (sorted batch sizes) pads each part's active batch up to the next bucket (batches
    above the largest run unpadded); ``cuda_graphs=True`` (CUDA only; buckets default to
    :data:`~eexit.bucketed.DEFAULT_BUCKETS`) captures one CUDA graph per part and bucket on first
    use (at compile time for every bucket when ``example_input`` is given) and replays it. Not with
    torch.compile's own CUDA graphs (``mode="reduce-overhead"``/``"max-autotune"``).
    """
    if not isinstance(model, EarlyExitModel):
        raise TypeError(f"compile: model must be an eexit.nn.EarlyExitModel, got {type(model).__name__}")
    if "dynamic" in options:
        raise ValueError("compile: dynamic is set by eexit (the batch dimension is dynamic, the others static)")
    if example_input is not None and _tensors(example_input)[0].shape[0] < 1:
        raise ValueError("compile: example_input must hold at least one sample, got an empty batch")
    if not isinstance(cuda_graphs, bool):
        raise TypeError(f"compile: cuda_graphs must be a bool, got {type(cuda_graphs).__name__}")
    if cuda_graphs:
        if options.get("mode") in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile: cuda_graphs=True captures eexit's own CUDA graphs; mode={options['mode']!r} "
                             "would add torch.compile's: use one of them")
        if not torch.cuda.is_available():
            raise ValueError("compile: cuda_graphs=True needs a CUDA device (torch.cuda.is_available() is False)")
        buckets = DEFAULT_BUCKETS if buckets is None else buckets
    buckets = None if buckets is None else check_buckets(buckets)
    if gate not in GATE_PLACES:
        raise ValueError(f"compile: gate must be one of {GATE_PLACES}, got {gate!r}")
    if gate == "inside" and buckets is not None:
        raise ValueError("compile: buckets and cuda_graphs need gate='between' (the gate's sizes are data-dependent)")
    for m in model.modules():
        if isinstance(m, ComputePathModule) and not m.compiled_as_op:
            m.compute_path = "reference"
    stages, exits = model.exit_stages()
    steps = [GatedStep(s, e) for s, e in zip(stages[:-1], exits[:-1])] if gate == "inside" else []
    _allow_graphs(len(stages) + len(exits) + 2 * len(steps))  # a step's graphs: per threshold too
    parts = ([CompiledPart(m, options) for m in stages], [CompiledPart(m, options) for m in exits])
    if buckets is not None:
        pool: dict = {}
        parts = tuple([BucketedPart(p, buckets, cuda_graphs, pool) for p in group] for group in parts)
    model.compiled_parts = parts
    model.compiled_steps = [CompiledPart(m, options) for m in steps] if steps else None
    model.compile_seconds = None
    if example_input is not None:
        start = time.perf_counter()
        sizes = WARMUP_BATCHES if not cuda_graphs else sorted(set(WARMUP_BATCHES) | set(buckets))
        for n in sizes:  # nobody leaves early (threshold inf): everything runs
            with torch.no_grad():
                rows = _rows(example_input, n)
                model.infer(rows, math.inf)
            with torch.inference_mode():
                model.infer(rows, math.inf)  # a normal tensor (data made outside inference mode)
                model.infer(_rows(example_input, n), math.inf)  # an inference tensor
        model.compile_seconds = time.perf_counter() - start
    return model


def uncompile(model: EarlyExitModel) -> EarlyExitModel:
    """Back to eager stages and exits (the compute paths stay as :func:`compile` set them); returns model."""
    model.compiled_parts = None
    model.compiled_steps = None
    return model
