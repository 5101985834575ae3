"""eexit: real sample-level early exit for PyTorch.

After each exit a fused op (:func:`eexit.ops.exit_gate`) scores the logits, applies the
threshold and splits the batch; :func:`eexit.ops.compact` carries the features of the
samples still active to the next stage. :mod:`eexit.reference` holds the pure-PyTorch
definitions every fused path is tested against.

The library, bottom to top: :mod:`eexit.ops` / :mod:`eexit.reference` (exit gate, compaction),
:mod:`eexit.nn` (modules with several compute paths; :mod:`eexit.kernels` holds their Triton
kernels, loaded on first use), :mod:`eexit.models` (MSDNet, BranchyNet), :mod:`eexit.runner`
(the early-exit loop), and :mod:`eexit.calibrate`, :mod:`eexit.flops`, :mod:`eexit.losses`,
:mod:`eexit.timing`; :func:`eexit.compile` runs a model's stages and exits under ``torch.compile``.
``eexit.serve`` (imported on first use: ``eexit.serve`` or ``import eexit.serve``) serves concurrent
requests with continuous batching per stage. The command line, training recipe, checkpoints and data sets are the
application, :mod:`eexit.app` (imported on demand: ``import eexit.app``).
"""
from eexit import calibrate, flops, losses, models, nn, ops, reference, runner, timing
from eexit._version import __version__
from eexit.compiled import compile, uncompile
from eexit.ops import ExitDecision, compact, exit_gate, has_extension

__all__ = [
    "ExitDecision", "__version__", "calibrate", "compact", "compile", "exit_gate", "flops", "has_extension", "losses",
    "models", "nn", "ops", "reference", "runner", "timing", "uncompile",
]


def __getattr__(name: str):
    """``eexit.serve`` (and ``eexit.serve_bench``), imported on first use: they start no thread and
    cost nothing until then."""
    if name in ("serve", "serve_bench"):
        import importlib

        return importlib.import_module(f"eexit.{name}")
    raise AttributeError(f"module 'eexit' has no attribute {name!r}")
