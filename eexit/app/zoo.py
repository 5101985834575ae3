"""The models the command line knows by name: how to build each and what input it takes."""
from __future__ import annotations

import functools
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from torch import nn

from eexit.models import MSDNet, b_alexnet, b_lenet, b_resnet110, msdnet_cifar_anytime, msdnet_cifar_budgeted
from eexit.models.msdnet import msdnet_imagenet


def msdnet_digits(num_classes: int = 10, backend: str = "auto") -> MSDNet:
    """A small MSDNet for the digits demo: 4 blocks of 2 layers, 3 scales (8/16/32 stem channels,
    growth 4/8/16), the CIFAR stem and classifiers, 32 px input."""
    return MSDNet(4, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=num_classes, dataset="cifar",
                  backend=backend)


class ModelEntry(NamedTuple):
    """build(num_classes) -> an EarlyExitModel; input_shape (C, H, W) it takes; official: the MSDNet
    preset whose official checkpoints it loads (None when there is none)."""

    build: Callable[[int], nn.Module]
    input_shape: Tuple[int, int, int]
    official: Optional[str] = None


MODELS: Dict[str, ModelEntry] = {
    "msdnet-digits": ModelEntry(msdnet_digits, (3, 32, 32)),
    "msdnet-cifar-anytime": ModelEntry(msdnet_cifar_anytime, (3, 32, 32), "cifar_anytime"),
    "msdnet-cifar-budgeted": ModelEntry(msdnet_cifar_budgeted, (3, 32, 32), "cifar_budgeted"),
    "msdnet-imagenet-step4": ModelEntry(functools.partial(msdnet_imagenet, 4), (3, 224, 224), "imagenet_step4"),
    "msdnet-imagenet-step6": ModelEntry(functools.partial(msdnet_imagenet, 6), (3, 224, 224), "imagenet_step6"),
    "msdnet-imagenet-step7": ModelEntry(functools.partial(msdnet_imagenet, 7), (3, 224, 224), "imagenet_step7"),
    "b-lenet": ModelEntry(b_lenet, (1, 28, 28)),
    "b-alexnet": ModelEntry(b_alexnet, (3, 32, 32)),
    "b-resnet110": ModelEntry(b_resnet110, (3, 32, 32)),
}


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ValueError listing the known names otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, num_classes: int) -> nn.Module:
    """A fresh model ``name`` with ``num_classes`` outputs per exit."""
    return entry(name).build(num_classes=num_classes)
