"""Swapping torchvision's DenseNet dense blocks for :class:`~eexit.nn.DenseConcatBlock`."""
from __future__ import annotations

from torch import nn

from eexit.nn.dense import DenseConcatBlock, is_torchvision_dense_block


def fuse_dense_blocks(model: nn.Module) -> nn.Module:
    """Replaces, in place, every torchvision DenseNet ``_DenseBlock`` inside ``model`` (at any depth, e.g.
    ``features.denseblock1`` .. ``denseblock4`` of ``torchvision.models.densenet121()``) by
    :meth:`DenseConcatBlock.from_torchvision` of it, which shares its parameters; returns model. A
    block registered in several places is replaced by one DenseConcatBlock. A model without dense blocks
    is returned unchanged.

    ValueError, with model left unchanged, when a block cannot be swapped exactly (e.g. ``drop_rate > 0``)
    or when model is itself a dense block (use ``DenseConcatBlock.from_torchvision(model)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if is_torchvision_dense_block(model):
        raise ValueError("model is itself a dense block and cannot be replaced in place: use "
                         "DenseConcatBlock.from_torchvision(model)")
    swaps, new = [], {}  # (parent, child name, old block); id(old block) -> its DenseConcatBlock
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if not is_torchvision_dense_block(child):
                continue
            if id(child) not in new:
                try:
                    new[id(child)] = DenseConcatBlock.from_torchvision(child)
                except ValueError as err:
                    path = f"{parent_name}.{name}" if parent_name else name
                    raise ValueError(f"model.{path} cannot be swapped: {err}") from err
            swaps.append((parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, new[id(child)])
    return model
