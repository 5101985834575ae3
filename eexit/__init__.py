"""eexit: real sample-level early exit for PyTorch.

After each exit a fused op (:func:`eexit.ops.exit_gate`) scores the logits, applies the
threshold and splits the batch; :func:`eexit.ops.compact` carries the features of the
samples still active to the next stage. :mod:`eexit.reference` holds the pure-PyTorch
definitions every fused path is tested against.
"""
from eexit import ops, reference
from eexit.ops import ExitDecision, compact, exit_gate, has_extension

__all__ = ["ExitDecision", "compact", "exit_gate", "has_extension", "ops", "reference"]
__version__ = "0.1.0"
