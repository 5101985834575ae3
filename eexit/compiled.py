"""Compiled early-exit inference: every stage and exit of an :class:`~eexit.nn.EarlyExitModel`
under ``torch.compile``, with the batch dimension dynamic, so that the shrinking active batch of
real early exit does not recompile; the exit gate and compaction run between the compiled graphs
(eexit's ops, the model's ``gate_ops``).

Compiled artifacts are cached on disk by Inductor (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER``): a second process with the same model and torch reuses them and
warms up much faster. Delete that folder to clear it.
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch
from torch import nn

from eexit.nn.early_exit import EarlyExitModel
from eexit.nn.execution import set_compute_path


def _tensors(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


# Batch sizes after which torch's graphs differ: sizes 0 and 1 are specialised, and the choice of CPU
# convolution backend (so the output layout) changes at 16 samples (ATen's ConvParams::use_mkldnn).
# One warm-up batch in each range compiles every graph infer will need.
WARMUP_BATCHES = (1, 2, 16)


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

    def __call__(self, x):
        tensors = _tensors(x)
        n = tensors[0].shape[0]
        if n == 0:
            return self.module(x)
        if n > 1:
            for t in tensors:
                torch._dynamo.mark_dynamic(t, 0)
        return self.compiled(x)


def _allow_graphs(parts: int) -> None:
    """Raises torch's per-function graph limit (``torch._dynamo.config.recompile_limit``, 8 by
    default) to what ``parts`` compiled modules need: instances of one class share a forward
    function, each instance with its graphs per warm-up size and grad mode. Past the limit torch
    would silently run the extra modules eagerly."""
    cfg = torch._dynamo.config
    needed = parts * len(WARMUP_BATCHES) * 2
    cfg.recompile_limit = max(cfg.recompile_limit, needed)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * needed)


def compile(model: EarlyExitModel, *, example_input: Optional[Any] = None, **options) -> EarlyExitModel:
    """Compiles every stage and exit of ``model`` (any :class:`~eexit.nn.EarlyExitModel`: MSDNet,
    BranchyNet, :class:`~eexit.nn.EarlyExitNetwork`, :func:`~eexit.nn.attach_exits` results) for
    ``forward`` and ``infer``; returns the same model.

    The conv modules are set to the reference compute path (Inductor sees plain convolutions,
    BatchNorm and concatenations); ``options`` go to ``torch.compile`` (``dynamic`` is not
    accepted: the batch dimension is dynamic, every other one static). With ``example_input``
    (a batch as ``forward`` takes it; its samples are repeated or cut to the sizes of
    ``WARMUP_BATCHES``) the graphs ``infer`` runs are compiled at once, under ``torch.no_grad()``
    and under ``torch.inference_mode()`` (their tensors differ, so each has its graphs; Inductor's
    cache makes the repeats cheap), and the time it took is ``model.compile_seconds``; after that
    no batch size recompiles. Otherwise each graph compiles on first use. :func:`uncompile` undoes it.
    """
    if not isinstance(model, EarlyExitModel):
        raise TypeError(f"compile: model must be an eexit.nn.EarlyExitModel, got {type(model).__name__}")
    if "dynamic" in options:
        raise ValueError("compile: dynamic is set by eexit (the batch dimension is dynamic, the others static)")
    if example_input is not None and _tensors(example_input)[0].shape[0] < 1:
        raise ValueError("compile: example_input must hold at least one sample, got an empty batch")
    set_compute_path(model, "reference")
    stages, exits = model.exit_stages()
    _allow_graphs(len(stages) + len(exits))
    model.compiled_parts = ([CompiledPart(m, options) for m in stages], [CompiledPart(m, options) for m in exits])
    model.compile_seconds = None
    if example_input is not None:
        start = time.perf_counter()
        for n in WARMUP_BATCHES:
            for mode in (torch.no_grad, torch.inference_mode):
                with mode():
                    model.infer(_rows(example_input, n), math.inf)  # nobody leaves early: everything runs
        model.compile_seconds = time.perf_counter() - start
    return model


def uncompile(model: EarlyExitModel) -> EarlyExitModel:
    """Back to eager stages and exits (the compute path stays "reference"); returns model."""
    model.compiled_parts = None
    return model
