"""Early-exit architectures built from :mod:`eexit.nn` modules: MSDNet and BranchyNet."""
from eexit.models.branchynet import b_alexnet, b_lenet, b_resnet110
from eexit.models.msdnet import PRESETS, MSDNet, msdnet_cifar_anytime, msdnet_cifar_budgeted, msdnet_imagenet

__all__ = [
    "PRESETS", "MSDNet", "b_alexnet", "b_lenet", "b_resnet110", "msdnet_cifar_anytime", "msdnet_cifar_budgeted",
    "msdnet_imagenet",
]
