"""Bucketed active-batch sizes for compiled early exit, and CUDA graphs over them
(``eexit.compile(model, buckets=..., cuda_graphs=True)``).

Real early exit runs each stage on whatever batch is still active, so a stage sees many batch
sizes. A CUDA graph replays one fixed launch sequence at one fixed size; to use them, the active
batch of ``n`` samples is padded up to the smallest *bucket* ``b >= n`` (the rows past ``n`` hold
whatever an earlier batch left there: every stage and exit works per sample in eval mode, and
those rows are dropped), the bucket's graph is replayed, and the first ``n`` rows are copied out.

The trade-off: a replay costs one launch instead of one per kernel plus Python and guard
overhead, which matters when kernels are short (small active batches in the deep stages, fast
GPUs); the padding costs up to ``b / n`` the work of the unpadded batch (at most 2x with the
default powers of two), one copy in and one copy out per stage, and GPU memory for every
(part, bucket) graph (one memory pool per model, shared by its graphs, which replay one at a
time on the current stream). Batches larger than the largest bucket, empty batches and calls
with autograd recording run the part as it is, without padding.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils._pytree import tree_flatten, tree_map

from eexit._layout import memory_format_of

#: The buckets when cuda_graphs=True and none are given, powers of two up to 1024.
DEFAULT_BUCKETS: Tuple[int, ...] = tuple(2 ** k for k in range(11))


def check_buckets(buckets: Any) -> Tuple[int, ...]:
    """Sorted, distinct positive batch sizes; ValueError/TypeError naming ``buckets`` otherwise."""
    if isinstance(buckets, (str, bytes)) or not hasattr(buckets, "__iter__"):
        raise TypeError(f"compile: buckets must be a sequence of positive ints, got {type(buckets).__name__}")
    values = list(buckets)
    if not values or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values):
        raise ValueError(f"compile: buckets must be a non-empty sequence of positive ints, got {values!r}")
    return tuple(sorted(set(values)))


def _first(x: Any) -> torch.Tensor:
    return tree_flatten(x)[0][0]


class _Graph:
    """One captured replay of a part at one bucket size: static input and output tensors."""

    def __init__(self, fn, x: Any, bucket: int, pool) -> None:
        def buffer(t: torch.Tensor) -> torch.Tensor:
            fmt = memory_format_of(t)
            return torch.zeros((bucket,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device).contiguous(
                memory_format=fmt)

        self.inputs = tree_map(buffer, x)
        side = torch.cuda.Stream(device=_first(x).device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (compiles, picks cuDNN algorithms)
            for _ in range(2):
                fn(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(self.inputs)

    def __call__(self, x: Any, n: int) -> Any:
        for static, t in zip(tree_flatten(self.inputs)[0], tree_flatten(x)[0]):
            static[:n].copy_(t)
        self.graph.replay()
        return tree_map(lambda t: t[:n].clone(memory_format=memory_format_of(t)), self.outputs)


class BucketedPart:
    """A stage or exit (``fn``: a module or a :class:`~eexit.compiled.CompiledPart`) run at
    bucketed batch sizes; on CUDA with ``cuda_graphs`` each (bucket, input layout, grad mode) is
    captured once as a CUDA graph and replayed. Outputs are new tensors of the unpadded size."""

    def __init__(self, fn, buckets: Sequence[int], cuda_graphs: bool, pool_owner: Dict[str, Any]) -> None:
        self.fn = fn
        self.buckets = tuple(buckets)
        self.cuda_graphs = cuda_graphs
        self._pool_owner = pool_owner  # one graph memory pool per model, made on first capture
        self.graphs: Dict[tuple, _Graph] = {}

    def bucket(self, n: int) -> Optional[int]:
        """The smallest bucket holding n samples, None when n is 0 or above every bucket."""
        if n == 0:
            return None
        return next((b for b in self.buckets if b >= n), None)

    def __call__(self, x: Any) -> Any:
        n = _first(x).shape[0]
        b = self.bucket(n)
        if b is None or torch.is_grad_enabled():
            return self.fn(x)
        if self.cuda_graphs and _first(x).is_cuda:
            key = (b, torch.is_inference_mode_enabled()) + tuple(
                (t.device, t.dtype, tuple(t.shape[1:]), memory_format_of(t)) for t in tree_flatten(x)[0])
            graph = self.graphs.get(key)
            if graph is None:
                if "pool" not in self._pool_owner:
                    self._pool_owner["pool"] = torch.cuda.graph_pool_handle()
                graph = self.graphs[key] = _Graph(self.fn, x, b, self._pool_owner["pool"])
            return graph(x, n)
        if b == n:
            return self.fn(x)
        padded = tree_map(lambda t: torch.cat([t, t[:1].expand((b - n,) + tuple(t.shape[1:]))]).contiguous(
            memory_format=memory_format_of(t)), x)
        return tree_map(lambda t: t[:n], self.fn(padded))
