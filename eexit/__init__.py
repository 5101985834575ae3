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
The command line, training recipe, checkpoints and data sets are the
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
