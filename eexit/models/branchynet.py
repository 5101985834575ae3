"""BranchyNet (Teerapittayanon, McDanel, Kung, "BranchyNet: Fast Inference via Early Exiting from
Deep Neural Networks", ICPR 2016, arXiv 1709.01686): B-LeNet (MNIST), B-AlexNet (CIFAR-10) and
B-ResNet-110 (CIFAR-10), layer for layer as in the OFFICIAL Chainer 1.17 code,
github.com/kunglab/branchynet (``networks/lenet_mnist.py``, ``networks/alex_cifar10.py``,
``networks/resnet_cifar10.py``, with ``branchynet/links/resnet.py`` for ``ResBlock`` and
``branchynet/links/links.py`` / ``branchynet/net.py`` for what ``Branch``, ``FL`` and ``SL`` do).

The official code builds one list of links; every ``Branch([...])`` entry is a side exit that reads
the trunk's output at that point, and the last ``Branch`` is the final classifier. Here that list is
cut at the branch points into an :class:`eexit.nn.EarlyExitNetwork`:

* stage k = the trunk layers between branch k-1 and branch k (the image goes into stage 0);
* exit k = branch k's own layers, ending in a Linear to ``num_classes``;
* the last exit = the layers of the final ``Branch`` (the trunk's classifier).

Where the branches attach follows the CODE, which in places differs from the paper's text
(Section IV): see each builder's docstring.

Chainer defaults that differ from PyTorch's, reproduced here:

* ``F.max_pooling_2d`` has ``cover_all=True``: ceil-mode output sizes (``ceil_mode=True``). The
  official Linear sizes (640, 720, 512, 128, 1024) only come out this way.
* ``F.average_pooling_2d(x, k, s)`` has no cover_all (floor); ``stride=None`` means ``stride=k``.
* ``L.Convolution2D(in, out, k, stride=1, pad=0, wscale=1)``: pad 0 unless given (ResNet's stem).
* ``F.local_response_normalization(x, n=5, k=2, alpha=1e-4, beta=0.75)`` computes
  ``x / (k + alpha * sum_{|c'-c| <= n//2} x_c'^2) ** beta``; PyTorch's ``LocalResponseNorm(size,
  alpha, beta, k)`` divides alpha by size, so alpha is multiplied by n here (:func:`chainer_lrn`).
* ``L.BatchNormalization(size)``: eps = 2e-5 (PyTorch 1e-5); decay 0.9 = PyTorch momentum 0.1.
* ``L.Linear`` flattens its input (C, H, W order, as ``nn.Flatten``).
* Initialisation (``init="chainer"``, the default): Chainer 1.17 draws every Convolution2D / Linear
  weight from N(0, wscale / fan_in) (its default ``HeNormal(1/sqrt(2))`` scaled by sqrt(wscale))
  and sets biases to 0; the ResNet stem and ResBlock convolutions use ``wscale = sqrt(2)``, all
  other layers wscale = 1. BatchNorm starts at gamma = 1, beta = 0 as in PyTorch.
  ``init="torch"`` keeps PyTorch's default initialisation instead.
* ``SL(FL(F.dropout, 0.5, train=True))`` drops out in training only: ``nn.Dropout(0.5)``.

Training in the official code: joint loss, the sum of each exit's softmax cross-entropy weighted
by ``Branch.weight`` (1 everywhere in these files); see :func:`eexit.losses.joint_loss`.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from eexit.nn import ComputePathModule, Conv2d, EarlyExitNetwork, LocalResponseNorm, MaxPool2d
from eexit.nn.direct_conv import conv2d_inference
from eexit.nn.folding import bn_sources, fold_conv_bn

__all__ = ["ResBlock", "b_alexnet", "b_lenet", "b_resnet110", "chainer_lrn", "BN_EPS", "INITS"]

BN_EPS = 2e-5  # chainer.links.BatchNormalization default
INITS = ("chainer", "torch")
_WSCALE = "_chainer_wscale"  # attribute read by _chainer_init_


# ----------------------------------------------------------------------------------------------
# layers with the official (Chainer) semantics
# ----------------------------------------------------------------------------------------------

def _conv(c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 0, wscale: float = 1.0) -> Conv2d:
    """``L.Convolution2D(c_in, c_out, k, stride, pad, wscale)``: bias on, pad 0 by default. eexit's
    Conv2d: F.conv2d to train, eexit.ops.direct_conv2d to infer where it is faster (few channels)."""
    conv = Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=True)
    setattr(conv, _WSCALE, float(wscale))
    return conv


def _linear(n_in: int, n_out: int) -> nn.Module:
    """``L.Linear(n_in, n_out)``, which flattens a feature map first (C, H, W order)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out))


def _max_pool(k: int, s: int) -> MaxPool2d:
    # Chainer's F.max_pooling_2d defaults to cover_all=True: output ceil((H - k) / s) + 1.
    # eexit's MaxPool2d: F.max_pool2d to train, eexit.ops.max_pool2d (much faster on CPU) to infer.
    return MaxPool2d(k, s, ceil_mode=True)


def chainer_lrn(n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75) -> LocalResponseNorm:
    """``F.local_response_normalization(x, n, k, alpha, beta)`` (Chainer's defaults) as a PyTorch
    module. Chainer: ``x / (k + alpha * S) ** beta`` with S the sum of x^2 over the channels
    c - n//2 .. c + n//2 (missing channels count 0). PyTorch's LocalResponseNorm uses
    ``alpha / size * S`` over the same window (odd n), so alpha is scaled by n. The module is
    :class:`eexit.nn.LocalResponseNorm` (one pass to infer on CPU)."""
    if n < 1 or n % 2 == 0:
        raise ValueError(f"chainer_lrn: n must be a positive odd int (a centred window), got {n}")
    return LocalResponseNorm(n, alpha=alpha * n, beta=beta, k=k)


def _official_lrn() -> LocalResponseNorm:
    # FL(F.local_response_normalization, n=3, alpha=5e-05, beta=0.75), k = 2 (Chainer default)
    return chainer_lrn(n=3, k=2.0, alpha=5e-5, beta=0.75)


def _relu(inplace: bool = False) -> nn.ReLU:
    # In place only right after a layer that made a fresh tensor (conv, pool, BatchNorm, Linear) in
    # the same stage or exit; never first: a stage's output is read by its exit and the next stage.
    return nn.ReLU(inplace=inplace)


class ResBlock(ComputePathModule):
    """``branchynet/links/resnet.py: ResBlock(in_size, out_size, stride)``, a basic block:
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, 3x3 convs with bias (wscale sqrt(2)),
    BatchNorm eps 2e-5. Shortcut when the shape changes: zero channels concatenated IN FRONT of
    x (``F.concat((zeros, x))``), then ``F.average_pooling_2d(x, 1, 2)``, i.e. every second row and
    column; identity otherwise.

    Compute paths (:mod:`eexit.nn.execution`; same parameters and state_dict on each): the
    reference path runs the modules as written (training); every inference path folds each
    BatchNorm into its convolution (convolutions as in :class:`eexit.nn.Conv2d`), applies the ReLUs
    in place and adds the shortcut into the output's last channels: no zero tensor, no BatchNorm or
    concatenation pass. Input [N, in_size, H, W], any memory format (kept) and float dtype."""

    def __init__(self, in_size: int, out_size: int, stride: int = 1, backend: str = "auto") -> None:
        super().__init__(backend)
        if out_size < in_size:
            raise ValueError(f"ResBlock: out_size ({out_size}) < in_size ({in_size}) has no zero-pad shortcut")
        w = math.sqrt(2)
        self.conv1 = _conv(in_size, out_size, 3, stride, 1, wscale=w)
        self.bn1 = nn.BatchNorm2d(out_size, eps=BN_EPS)
        self.conv2 = _conv(out_size, out_size, 3, 1, 1, wscale=w)
        self.bn2 = nn.BatchNorm2d(out_size, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolve_path(x) == "reference":
            h = F.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            if x.shape != h.shape:
                pad_c = h.shape[1] - x.shape[1]
                x = torch.cat([x.new_zeros(x.shape[0], pad_c, x.shape[2], x.shape[3]), x], 1)
                if x.shape[2:] != h.shape[2:]:
                    x = F.avg_pool2d(x, 1, 2)  # 1x1 window, stride 2: subsampling
            return F.relu(h + x)
        with torch.no_grad():
            h = self._folded_conv(x, 1).relu_()
            h = self._folded_conv(h, 2)
            if h.shape[1] == x.shape[1]:
                return h.add_(x).relu_()
            if h.shape[2:] != x.shape[2:]:
                x = x[:, :, ::2, ::2]  # = avg_pool2d(x, 1, 2)
            h[:, h.shape[1] - x.shape[1]:].add_(x)  # the shortcut's zero channels come first
            return h.relu_()

    def _folded_conv(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """conv{i} with bn{i} folded in, on x."""
        conv, bn = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
        sources = [conv.weight, conv.bias, *bn_sources(bn)]
        w, b = self._fold.get(f"conv{i}:{x.dtype}", sources, lambda: fold_conv_bn(conv, bn, x.dtype))
        return conv2d_inference(x, conv, w, b, self._fold, f"conv{i}:packed", sources)


def _chainer_init_(model: nn.Module) -> None:
    """Chainer 1.17's default initialisation: W ~ N(0, wscale / fan_in), b = 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(getattr(m, _WSCALE, 1.0) / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


def _build(stages: List[nn.Module], exits: List[nn.Module], init: str, input_shape: Tuple[int, int, int],
           name: str) -> EarlyExitNetwork:
    """The network, taking images [B, *input_shape] in the parameters' dtype (the size its Linear
    layers were sized for; forward and infer check it)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    net = EarlyExitNetwork(stages, exits, input_shape=input_shape, input_dtype="parameters", display_name=name)
    if init == "chainer":
        _chainer_init_(net)
    return net


def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


# ----------------------------------------------------------------------------------------------
# the three networks
# ----------------------------------------------------------------------------------------------

def b_lenet(num_classes: int = 10, init: str = "chainer") -> EarlyExitNetwork:
    """B-LeNet for MNIST, input [B, 1, 28, 28]; 2 exits (official ``networks/lenet_mnist.py``).

    Stages and exits (shapes per sample):

    * stage 0: conv 1->5 5x5 pad 3 -> [5, 30, 30] (branch reads the conv output, before pooling);
    * exit 0: maxpool 2/2 -> relu -> conv 5->10 3x3 pad 1 -> maxpool 2/2 -> relu ->
      Linear(640, C)   ([10, 8, 8] = 640);
    * stage 1: maxpool 2/2 -> relu -> conv 5->10 5x5 pad 3 -> maxpool 2/2 -> relu ->
      conv 10->20 5x5 pad 3 -> maxpool 2/2 -> relu -> Linear(720, 84) -> [84]
      ([20, 6, 6] = 720; no activation after this Linear in the official code);
    * exit 1 (final): Linear(84, C).

    All max-pools are ceil-mode (Chainer cover_all). Paper vs code: the paper's text (one branch of
    1 conv + 1 FC after the 1st conv layer of a 3-conv, 2-FC LeNet) agrees with the code here.
    """
    c = _check_classes(num_classes)
    stages = [
        nn.Sequential(_conv(1, 5, 5, 1, 3)),
        nn.Sequential(
            _max_pool(2, 2), _relu(True), _conv(5, 10, 5, 1, 3),
            _max_pool(2, 2), _relu(True), _conv(10, 20, 5, 1, 3),
            _max_pool(2, 2), _relu(True), _linear(720, 84),
        ),
    ]
    exits = [
        nn.Sequential(_max_pool(2, 2), _relu(True), _conv(5, 10, 3, 1, 1),
                      _max_pool(2, 2), _relu(True), _linear(640, c)),
        nn.Linear(84, c),
    ]
    return _build(stages, exits, init, (1, 28, 28), "B-LeNet (MNIST)")


def b_alexnet(num_classes: int = 10, init: str = "chainer") -> EarlyExitNetwork:
    """B-AlexNet for CIFAR-10, input [B, 3, 32, 32]; 3 exits (official ``networks/alex_cifar10.py``,
    ``gen_2b(branch1=norm() + conv(64) + conv(32) + cap(512), branch2=norm() + conv(96) + cap(128))``).

    ``norm()`` = relu -> maxpool 3/2 -> LRN(n=3, alpha=5e-5, beta=0.75, k=2); ``conv(n)`` = conv
    n->32 3x3 pad 1 -> relu; ``cap(n)`` = maxpool 3/2 -> Linear(n, C). All max-pools ceil-mode.

    * stage 0: conv 3->32 5x5 pad 2 -> relu -> maxpool 3/2 -> LRN -> conv 32->64 5x5 pad 2
      -> [64, 16, 16] (pre-activation output of conv2);
    * exit 0: norm() -> conv 64->32 -> relu -> conv 32->32 -> relu -> maxpool 3/2 -> Linear(512, C);
    * stage 1: relu -> maxpool 3/2 -> LRN -> conv 64->96 3x3 pad 1 -> [96, 8, 8] (pre-activation
      output of conv3);
    * exit 1: norm() -> conv 96->32 -> relu -> maxpool 3/2 -> Linear(128, C);
    * stage 2: relu -> conv 96->96 3x3 pad 1 -> relu -> conv 96->64 3x3 pad 1 -> relu ->
      maxpool 3/2 -> Linear(1024, 256) -> relu -> dropout 0.5 -> Linear(256, 128) -> relu ->
      dropout 0.5 -> [128];
    * exit 2 (final): Linear(128, C).

    Paper vs code: the paper's text puts the first branch (2 conv + 1 FC) after the 1st conv layer
    and the second (1 conv + 1 FC) after the 2nd. The official code attaches them one conv layer
    later, to the outputs of the 2nd and 3rd conv layers (before their ReLU; each branch begins
    with its own relu/pool/LRN, duplicating the trunk's). This follows the code.
    """
    c = _check_classes(num_classes)
    norm = lambda: [_relu(), _max_pool(3, 2), _official_lrn()]  # noqa: E731
    conv = lambda n: [_conv(n, 32, 3, 1, 1), _relu(True)]  # noqa: E731
    cap = lambda n: [_max_pool(3, 2), _linear(n, c)]  # noqa: E731
    stages = [
        nn.Sequential(
            _conv(3, 32, 5, 1, 2), _relu(True), _max_pool(3, 2), _official_lrn(),
            _conv(32, 64, 5, 1, 2),
        ),
        nn.Sequential(_relu(), _max_pool(3, 2), _official_lrn(), _conv(64, 96, 3, 1, 1)),
        nn.Sequential(
            _relu(), _conv(96, 96, 3, 1, 1), _relu(True), _conv(96, 64, 3, 1, 1), _relu(True), _max_pool(3, 2),
            _linear(1024, 256), _relu(True), nn.Dropout(0.5),
            nn.Linear(256, 128), _relu(True), nn.Dropout(0.5),
        ),
    ]
    exits = [
        nn.Sequential(*norm(), *conv(64), *conv(32), *cap(512)),
        nn.Sequential(*norm(), *conv(96), *cap(128)),
        nn.Linear(128, c),
    ]
    return _build(stages, exits, init, (3, 32, 32), "B-AlexNet (CIFAR-10)")


def b_resnet110(num_classes: int = 10, init: str = "chainer") -> EarlyExitNetwork:
    """B-ResNet-110 for CIFAR-10, input [B, 3, 32, 32]; 3 exits (official
    ``networks/resnet_cifar10.py`` as of its last commit, "align configuration with the paper").

    ResNet-110: stem conv + 3 x 18 :class:`ResBlock` (16, 32, 64 channels; the first block of the
    2nd and 3rd groups has stride 2 and a zero-pad shortcut) + pooling + Linear: 109 convs, 1 FC.

    * stage 0 (stem): conv 3->16 3x3 stride 1 PAD 0 (Chainer's default; the official
      ``L.Convolution2D(3, 16, 3, 1, 0, w)``) -> BN -> relu -> [16, 30, 30];
    * exit 0: conv 16->64 5x5 pad 2 -> relu -> LRN(n=3, alpha=5e-5, beta=0.75, k=2) ->
      conv 64->32 3x3 pad 1 -> relu -> conv 32->32 3x3 pad 1 -> relu -> Linear(28800, C)
      ([32, 30, 30] = 28800, no pooling);
    * stage 1: 18 ResBlock(16, 16) -> [16, 30, 30];
    * exit 1: ResBlock(16, 16) -> Linear(14400, C);
    * stage 2: ResBlock(16, 32, stride 2), 17 ResBlock(32, 32) -> [32, 15, 15],
      ResBlock(32, 64, stride 2), 17 ResBlock(64, 64) -> [64, 8, 8],
      average pooling 6x6 STRIDE 1 (``F.average_pooling_2d(h, 6, 1)``, not a global pool) ->
      [64, 3, 3];
    * exit 2 (final): Linear(576, C).

    Paper vs code: the paper's text puts the first branch (3 conv + 1 FC) after the 2nd conv layer
    and the second (2 conv + 1 FC) after the 37th. In the official code the first branch reads the
    output of the stem, i.e. after the 1st conv layer (+ BN + ReLU), and the second the output of
    the 18th block of the first group = after the 37th conv layer, as in the paper. This follows
    the code.
    """
    c = _check_classes(num_classes)
    n = 18
    w = math.sqrt(2)
    stem = nn.Sequential(_conv(3, 16, 3, 1, 0, wscale=w), nn.BatchNorm2d(16, eps=BN_EPS), _relu(True))
    group1 = nn.Sequential(*[ResBlock(16, 16) for _ in range(n)])
    rest = nn.Sequential(
        *[ResBlock(32 if i > 0 else 16, 32, 1 if i > 0 else 2) for i in range(n)],
        *[ResBlock(64 if i > 0 else 32, 64, 1 if i > 0 else 2) for i in range(n)],
        nn.AvgPool2d(6, stride=1),  # Chainer average_pooling_2d: floor sizes, no cover_all
    )
    exits = [
        nn.Sequential(
            _conv(16, 64, 5, 1, 2), _relu(True), _official_lrn(),
            _conv(64, 32, 3, 1, 1), _relu(True), _conv(32, 32, 3, 1, 1), _relu(True),
            _linear(28800, c),
        ),
        nn.Sequential(ResBlock(16, 16), _linear(14400, c)),
        _linear(576, c),
    ]
    return _build([stem, group1, rest], exits, init, (3, 32, 32), "B-ResNet-110 (CIFAR-10)")
