"""Early-exit architectures built from :mod:`eexit.nn` modules."""
from eexit.models.msdnet import (
    PRESETS,
    MSDNet,
    msdnet_cifar_anytime,
    msdnet_cifar_budgeted,
    msdnet_imagenet,
)

__all__ = ["PRESETS", "MSDNet", "msdnet_cifar_anytime", "msdnet_cifar_budgeted", "msdnet_imagenet"]
