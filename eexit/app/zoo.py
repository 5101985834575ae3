"""The models the command line knows by name: how to build each and what input it takes.

``resnet18-exits`` and ``mobilenet-v3-small-exits`` are torchvision models (random weights) cut
by :func:`eexit.nn.attach_exits`; torchvision (a development dependency, ``pip install
torchvision``) is imported only when one of them is built. ``eexit train --init-from FILE`` loads
FILE into such a model's ``backbone`` (the torchvision model, which the network shares), so FILE
takes torchvision's key layout (each entry's ``init_layout`` says which):

* resnet18-exits: the state_dict of ``torchvision.models.resnet18()`` (``conv1.weight``,
  ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``fc.weight``, ``fc.bias``); timm's ``resnet18``
  uses the same names, so its files load too;
* mobilenet-v3-small-exits: the state_dict of ``torchvision.models.mobilenet_v3_small()``
  (``features.0.0.weight``, ..., ``classifier.3.weight``); timm's MobileNetV3 names differ
  (``conv_stem``, ``blocks``) and do not load.

For the other models ``--init-from`` takes their own ``state_dict()`` layout.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn

from eexit.models import MSDNet, b_alexnet, b_lenet, b_resnet110, msdnet_cifar_anytime, msdnet_cifar_budgeted
from eexit.models.msdnet import msdnet_imagenet


def msdnet_digits(num_classes: int = 10, backend: str = "auto") -> MSDNet:
    """A small MSDNet for the digits demo: 4 blocks of 2 layers, 3 scales (8/16/32 stem channels,
    growth 4/8/16), the CIFAR stem and classifiers, 32 px input."""
    return MSDNet(4, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=num_classes, dataset="cifar",
                  backend=backend)


def msdnet_mnist(num_classes: int = 10, backend: str = "auto") -> MSDNet:
    """:func:`msdnet_digits` for 28 px grey images (MNIST, Fashion-MNIST): one input channel, scales
    of 28, 14 and 7 px (7.78 MFLOPs for the full network)."""
    return MSDNet(4, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=num_classes, dataset="cifar",
                  in_channels=1, image_size=28, backend=backend)


def _torchvision_models(model: str):
    """torchvision.models, imported now; ModuleNotFoundError saying how to install it otherwise."""
    try:
        import torchvision.models
    except ImportError as err:
        raise ModuleNotFoundError(f"model {model} needs torchvision ({err}): pip install torchvision") from None
    return torchvision.models


def resnet18_exits(num_classes: int = 10) -> nn.Module:
    """torchvision's ``resnet18(num_classes=num_classes)`` (the ImageNet layout, random weights) with
    exits (global average pooling -> Linear) after ``layer1``, ``layer2`` and ``layer3``, for 32 px
    3-channel input; the last exit is its own ``fc``. The torchvision model is the result's
    ``backbone`` (it shares its modules), which ``eexit train --init-from`` loads."""
    from eexit.nn import attach_exits

    backbone = _torchvision_models("resnet18-exits").resnet18(num_classes=num_classes)
    return attach_exits(backbone, ["layer1", "layer2", "layer3"], num_classes, torch.zeros(1, 3, 32, 32))


def mobilenet_v3_small_exits(num_classes: int = 10) -> nn.Module:
    """torchvision's ``mobilenet_v3_small(num_classes=num_classes)`` (random weights) with exits
    (global average pooling -> Linear) after ``features.3``, ``features.8`` and ``features.11``
    (24, 48 and 96 channels; about 16, 38 and 70 % of the network's multiply-adds at 32 px), for
    32 px 3-channel input; the last exit is its own ``classifier``. The torchvision model is the
    result's ``backbone``, which ``eexit train --init-from`` loads."""
    from eexit.nn import attach_exits

    backbone = _torchvision_models("mobilenet-v3-small-exits").mobilenet_v3_small(num_classes=num_classes)
    return attach_exits(backbone, ["features.3", "features.8", "features.11"], num_classes,
                        torch.zeros(1, 3, 32, 32))


TORCHVISION_MOBILENET_V3_SMALL = ("torchvision's mobilenet_v3_small state_dict (features.0.0.weight, ..., "
                                  "classifier.3.*); timm's names differ")
TORCHVISION_RESNET18 = ("torchvision's resnet18 state_dict (conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*); "
                        "timm's resnet18 uses the same names")


class ModelEntry(NamedTuple):
    """build(num_classes) -> an EarlyExitModel; input_shape (C, H, W) it takes; official: the MSDNet
    preset whose official checkpoints it loads (None when there is none); init_layout: the key
    layout ``eexit train --init-from`` expects, for models with a ``backbone`` (None: the model's
    own ``state_dict()`` layout)."""

    build: Callable[[int], nn.Module]
    input_shape: Tuple[int, int, int]
    official: Optional[str] = None
    init_layout: Optional[str] = None


MODELS: Dict[str, ModelEntry] = {
    "msdnet-digits": ModelEntry(msdnet_digits, (3, 32, 32)),
    "msdnet-mnist": ModelEntry(msdnet_mnist, (1, 28, 28)),
    "msdnet-cifar-anytime": ModelEntry(msdnet_cifar_anytime, (3, 32, 32), "cifar_anytime"),
    "msdnet-cifar-budgeted": ModelEntry(msdnet_cifar_budgeted, (3, 32, 32), "cifar_budgeted"),
    "msdnet-imagenet-step4": ModelEntry(functools.partial(msdnet_imagenet, 4), (3, 224, 224), "imagenet_step4"),
    "msdnet-imagenet-step6": ModelEntry(functools.partial(msdnet_imagenet, 6), (3, 224, 224), "imagenet_step6"),
    "msdnet-imagenet-step7": ModelEntry(functools.partial(msdnet_imagenet, 7), (3, 224, 224), "imagenet_step7"),
    "b-lenet": ModelEntry(b_lenet, (1, 28, 28)),
    "b-alexnet": ModelEntry(b_alexnet, (3, 32, 32)),
    "b-resnet110": ModelEntry(b_resnet110, (3, 32, 32)),
    "resnet18-exits": ModelEntry(resnet18_exits, (3, 32, 32), init_layout=TORCHVISION_RESNET18),
    "mobilenet-v3-small-exits": ModelEntry(mobilenet_v3_small_exits, (3, 32, 32),
                                           init_layout=TORCHVISION_MOBILENET_V3_SMALL),
}


def entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ValueError listing the known names otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, num_classes: int) -> nn.Module:
    """A fresh model ``name`` with ``num_classes`` outputs per exit."""
    return entry(name).build(num_classes=num_classes)
