"""MSDNet (Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image Classification",
ICLR 2018, arXiv 1703.09844), with the state_dict of the official PyTorch code, key for key
(github.com/kalviny/MSDNet-PyTorch, ``models/msdnet.py``; hyperparameters as in ``args.py``/``main.py``).

Module tree and keys (b: block, l: position in the block, s: scale, k: exit):

* ``blocks.{b}``: :class:`MSDBlock`, an ``nn.Sequential`` of [stem (block 0 only), then
  :class:`MSDLayer` and :class:`MSDTransition` in order].
* ``blocks.0.0.layers.{s}``: the stem (official ``MSDNFirstLayer``). Scale 0 is a 3x3
  :class:`~eexit.nn.ConvBNReLU` on CIFAR (``.net.{0,1}``), or on ImageNet a plain ``nn.Sequential``
  of a 7x7 stride-2 conv *with bias*, BN, ReLU, 3x3 stride-2 max-pool (``.0.weight``, ``.0.bias``,
  ``.1.*``; :class:`ImageNetStem`); each coarser scale is a 3x3 stride-2 ConvBNReLU of the previous one.
* ``blocks.{b}.{l}.layers.{j}``: :class:`ScaleConv` (official ``ConvNormal`` / ``ConvDownNormal``),
  with ``conv_down`` (if any) and ``conv_normal``, each a :class:`~eexit.nn.BottleneckConv`
  (official ``ConvBN``, ``.net.{0,1,3,4}``).
* ``blocks.{b}.{l}.m.{j}.net.{0,1}``: transition 1x1 ConvBNReLU (official ``ParallelModule`` of ``ConvBasic``).
* ``classifier.{k}.m.{0,1}.net.{0,1}``: two 3x3 stride-2 ConvBNReLU, ``m.2`` AvgPool2d(2),
  ``classifier.{k}.linear``.

Forward semantics match the official code: ``model(x)`` returns every exit's logits. The same
model is exposed stage by stage through :meth:`MSDNet.exit_stages` for a real early-exit runner.

Weight initialisation is PyTorch's default everywhere. The official ``_init_weights`` loop only
visits the direct children of each block (MSDNFirstLayer, MSDNLayer, ...) and each
ClassifierModule, none of which is a Conv2d/BatchNorm2d/Linear, so it changes nothing there either.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from eexit import ops
from eexit._layout import memory_format_of
from eexit.models.state_dict import mismatch_report, read_torch
from eexit.nn import BottleneckConv, ComputePathModule, ConvBNReLU, EarlyExitModel
from eexit.nn.folding import bn_sources, fold_conv_bn
from eexit.nn.packed_conv import conv2d_onednn, to_packing_layout

Features = List[torch.Tensor]
DATASETS = ("cifar", "imagenet")
DATASET_NAMES = {"cifar": "CIFAR", "imagenet": "ImageNet"}
IMAGE_SIZE = {"cifar": 32, "imagenet": 224}  # the images each dataset's MSDNets are built for (square)
STEP_MODES = ("even", "lin_grow")
PRUNE_RULES = ("max", "min")


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------

class ImageNetStem(nn.Sequential, ComputePathModule):
    """MSDNet's ImageNet scale-0 stem, the official ``nn.Sequential`` (keys ``0.weight``, ``0.bias``,
    ``1.*``): conv 7x7 stride 2 with bias, BatchNorm, ReLU, max-pool 3x3 stride 2 pad 1.

    The reference path runs the modules; the inference paths fold the BatchNorm into the conv (its
    weight packed for oneDNN with the ReLU fused on channels_last float32 CPU input,
    :mod:`eexit.nn.packed_conv`) and pool with :func:`eexit.ops.max_pool2d`: no BatchNorm or ReLU
    pass over the largest map of the network. [N, C_in, H, W] -> [N, C_out, H/4, W/4], x's memory format.
    """

    def __init__(self, in_channels: int, out_channels: int, backend: str = "auto") -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 7, 2, 3), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))  # then ComputePathModule
        self.set_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolve_path(x) == "reference":
            return nn.Sequential.forward(self, x)
        conv, bn, _, pool = self
        sources = [conv.weight, conv.bias, *bn_sources(bn)]
        with torch.no_grad():
            w, b = self._fold.get(f"conv:{x.dtype}", sources, lambda: fold_conv_bn(conv, bn, x.dtype))
            y = conv2d_onednn(x, conv, w, b, self._fold, "conv:packed", sources, relu=True)
            return ops.max_pool2d(y, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)


class MSDStem(nn.Module):
    """First layer (official ``MSDNFirstLayer``): image [N, in_channels, H, W] -> one map per scale.

    CIFAR: scale 0 is a 3x3 ConvBNReLU, [N, c_0, H, W]. ImageNet: conv 7x7 stride 2 (bias) + BN +
    ReLU + max-pool 3x3 stride 2 pad 1, [N, c_0, H/4, W/4]. Scale s >= 1: a 3x3 stride-2 ConvBNReLU
    of scale s - 1, c_s = n_channels * gr_factor[s] channels.

    On an inference path the maps are channels_last for float32 CPU input in any memory format
    (:func:`~eexit.nn.packed_conv.to_packing_layout`: the image, or a one-channel image's first
    map, copied once), so that every layer after runs the packed oneDNN convolutions: on contiguous
    input the reference full network takes 1.42-1.78x the fused one's time, 0.97-1.19x while the
    maps kept that format (``benchmarks/results/msdnet_formats-cpu-2026-12-05-stem-layout.md``).
    Otherwise the maps keep x's format.
    """

    def __init__(self, n_channels: int, gr_factor: Sequence[int], dataset: str, backend: str = "auto",
                 in_channels: int = 3) -> None:
        super().__init__()
        widths = [n_channels * g for g in gr_factor]
        if dataset == "cifar":
            first: nn.Module = ConvBNReLU(in_channels, widths[0], 3, 1, 1, backend=backend)
        else:
            first = ImageNetStem(in_channels, widths[0], backend)
        self.layers = nn.ModuleList(
            [first] + [ConvBNReLU(widths[s - 1], widths[s], 3, 2, 1, backend=backend) for s in range(1, len(widths))]
        )

    def forward(self, x: torch.Tensor) -> Features:
        """x [N, in_channels, H, W] -> [scale 0, scale 1, ...], each [N, c_s, H_s, W_s]."""
        layout = to_packing_layout if self.layers[0].resolve_path(x) != "reference" else (lambda t: t)
        out = []
        x = layout(x)
        for layer in self.layers:
            x = layout(layer(x))
            out.append(x)
        return out


class ScaleConv(nn.Module):
    """One scale of an MSD layer (official ``ConvDownNormal``, or ``ConvNormal`` without a finer input).

    With a finer input: ``cat([same, conv_down(finer), conv_normal(same)], 1)``, each conv giving
    ``growth // 2`` channels (conv_down has stride 2). Without: ``cat([same, conv_normal(same)], 1)``,
    conv_normal giving ``growth`` channels. ``_convs`` states that order once; :meth:`forward`
    concatenates in it and :meth:`forward_into` writes in it.
    """

    def __init__(self, in_same: int, in_finer: Optional[int], growth: int, bottleneck: bool,
                 bn_same: int, bn_finer: int, backend: str = "auto") -> None:
        super().__init__()
        if in_finer is None:
            self.conv_normal = BottleneckConv(in_same, growth, "normal", bottleneck, bn_same, backend=backend)
            self.conv_down = None
        else:  # conv_down first: the official registration (and state_dict) order
            self.conv_down = BottleneckConv(in_finer, growth // 2, "down", bottleneck, bn_finer, backend=backend)
            self.conv_normal = BottleneckConv(in_same, growth // 2, "normal", bottleneck, bn_same, backend=backend)

    def _check_finer(self, finer: Optional[torch.Tensor]) -> None:
        if (finer is None) != (self.conv_down is None):
            raise ValueError("ScaleConv: pass the finer-scale input exactly when the unit has conv_down")

    @property
    def added_channels(self) -> int:
        """Channels the unit appends to the same-scale map."""
        return sum(conv.out_channels for conv, _ in self._convs(None, None))

    def _convs(self, same, finer) -> List[Tuple[BottleneckConv, Any]]:
        """(conv, its input) in concat order, after the same-scale map itself."""
        return ([(self.conv_down, finer)] if self.conv_down is not None else []) + [(self.conv_normal, same)]

    def forward(self, same: torch.Tensor, finer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """same [N, C, H, W], finer [N, C_f, 2H, 2W] (required iff conv_down) -> [N, C + growth, H, W]."""
        self._check_finer(finer)
        return torch.cat([same] + [conv(t) for conv, t in self._convs(same, finer)], 1)

    def forward_into(self, same: torch.Tensor, c_same: int, finer: Optional[torch.Tensor] = None,
                     c_finer: int = 0) -> int:
        """The buffer form of :meth:`forward`: ``same`` is a concat buffer whose first ``c_same``
        channels hold the same-scale map, ``finer`` (iff conv_down) one whose first ``c_finer`` hold the
        finer map; the new channels are written into ``same[:, c_same : c_same + added_channels]``
        (:meth:`~eexit.nn.conv.ConvStack.into`). Returns ``c_same + added_channels``."""
        self._check_finer(finer)
        at = c_same
        for conv, (t, c) in self._convs((same, c_same), None if finer is None else (finer, c_finer)):
            conv.into(t, c, same, at)
            at += conv.out_channels
        return at


class MSDLayer(nn.Module):
    """One MSDNet layer (official ``MSDNLayer``): in_scales maps -> out_scales maps (the coarsest ones).

    Scale s (offset <= s < n_scales, offset = n_scales - out_scales) gains ``growth_rate * gr_factor[s]``
    channels. When a scale is dropped (in_scales = out_scales + 1) the first output scale also reads
    the dropped, finer map through a strided conv.
    """

    def __init__(self, n_in: int, growth_rate: int, gr_factor: Sequence[int], bn_factor: Sequence[int],
                 bottleneck: bool, in_scales: int, out_scales: int, backend: str = "auto") -> None:
        super().__init__()
        n_scales = len(gr_factor)
        if not 1 <= out_scales <= in_scales <= min(n_scales, out_scales + 1):
            raise ValueError(f"MSDLayer: need 1 <= out_scales <= in_scales <= out_scales + 1 <= n_scales + 1, "
                             f"got in_scales={in_scales}, out_scales={out_scales}, n_scales={n_scales}")
        self.in_scales, self.out_scales = in_scales, out_scales
        self.discard = in_scales - out_scales
        offset = n_scales - out_scales
        units = []
        for s in range(offset, n_scales):
            has_finer = s > offset or self.discard > 0
            units.append(ScaleConv(
                n_in * gr_factor[s], n_in * gr_factor[s - 1] if has_finer else None, growth_rate * gr_factor[s],
                bottleneck, bn_factor[s], bn_factor[s - 1] if has_finer else 1, backend=backend,
            ))
        self.layers = nn.ModuleList(units)

    def _wiring(self, n_inputs: int) -> List[Tuple[ScaleConv, int, Optional[int]]]:
        """(unit, index of its same-scale input, index of its finer input or None), output order."""
        if n_inputs != self.in_scales:
            raise ValueError(f"MSDLayer: expected {self.in_scales} scales, got {n_inputs}")
        d = self.discard
        return [(unit, j + d, j + d - 1 if j + d > 0 else None) for j, unit in enumerate(self.layers)]

    def forward(self, x: Features) -> Features:
        """in_scales maps (finest first) -> out_scales maps, each with growth_rate * gr_factor[s] more channels."""
        return [unit(x[s], None if f is None else x[f]) for unit, s, f in self._wiring(len(x))]

    def forward_into(self, bufs: Features, counts: List[int]) -> Tuple[Features, List[int]]:
        """The buffer form of :meth:`forward`: input scale i is the first ``counts[i]`` channels of
        concat buffer ``bufs[i]``, with room for what the layer appends. Returns the output scales'
        buffers and channel counts (the coarsest out_scales inputs, grown in place)."""
        wiring = self._wiring(len(bufs))
        out = [unit.forward_into(bufs[s], counts[s], None if f is None else bufs[f], 0 if f is None else counts[f])
               for unit, s, f in wiring]  # units read the counts from before the layer
        return [bufs[s] for _, s, _ in wiring], out

    def uses_buffers(self, x: torch.Tensor) -> bool:
        """Whether the layer runs in concat buffers for input x: on the Triton compute path, whose
        kernels read and write channel windows in place. PyTorch's CPU convolutions copy a channel
        window of a wider buffer before reading it and cannot write into one, so on the folded path
        buffers would copy more than ``torch.cat`` does: there the layer concatenates."""
        return self.layers[0].conv_normal.resolve_path(x) == "triton"


class MSDTransition(nn.Module):
    """Transition (official ``ParallelModule`` of 1x1 ``ConvBasic``): scale s goes from
    ``n_in * gr_factor[s]`` to ``n_out * gr_factor[s]`` channels, each scale on its own."""

    def __init__(self, n_in: int, n_out: int, scale_factors: Sequence[int], backend: str = "auto") -> None:
        super().__init__()
        self.m = nn.ModuleList(ConvBNReLU(n_in * g, n_out * g, 1, 1, 0, backend=backend) for g in scale_factors)

    def forward(self, x: Features) -> Features:
        """len(m) maps [N, n_in * g_s, H_s, W_s] -> [N, n_out * g_s, H_s, W_s]."""
        if len(x) != len(self.m):
            raise ValueError(f"MSDTransition: expected {len(self.m)} scales, got {len(x)}")
        return [conv(t) for conv, t in zip(self.m, x)]


class MSDBlock(nn.Sequential):
    """The layers between two exits (one stage): [stem,] MSDLayer / MSDTransition ...

    Input: the image [N, 3, H, W] for block 0, else the previous block's maps; output: the list of
    per-scale maps [N, C_s, H_s, W_s] (finest remaining scale first).

    Every layer concatenates (``torch.cat``) on the reference and folded compute paths. On the Triton
    path each stretch of consecutive MSD layers runs in one preallocated concat buffer per scale (in
    the input's memory format): each map is copied in once, then every layer appends through
    :meth:`MSDLayer.forward_into` (see :meth:`MSDLayer.uses_buffers`).
    """

    def forward(self, x: Union[torch.Tensor, Features]) -> Features:
        units = list(self)
        i = 0
        while i < len(units):
            j = i
            while j < len(units) and isinstance(units[j], MSDLayer) and units[j].uses_buffers(x[0]):
                j += 1
            if j > i:
                x = _grow_in_buffers(x, units[i:j])
                i = j
            else:
                x = units[i](x)
                i += 1
        return x


def _grow_in_buffers(feats: Features, layers: Sequence[MSDLayer]) -> Features:
    """Runs consecutive MSD layers in per-scale concat buffers sized for all of them; returns the
    buffers of the scales left."""
    total = [t.shape[1] for t in feats]
    scales = list(range(len(feats)))  # which of feats each current scale is, finest first
    for layer in layers:
        scales = scales[layer.discard:]
        for s, unit in zip(scales, layer.layers):
            total[s] += unit.added_channels
    bufs = []
    for t, c in zip(feats, total):
        buf = torch.empty((t.shape[0], c, *t.shape[2:]), dtype=t.dtype, device=t.device,
                          memory_format=memory_format_of(t))
        buf[:, : t.shape[1]].copy_(t)
        bufs.append(buf)
    counts = [t.shape[1] for t in feats]
    for layer in layers:
        bufs, counts = layer.forward_into(bufs, counts)
    return bufs


class MSDClassifier(nn.Module):
    """Exit head (official ``ClassifierModule``): reads the coarsest scale, two 3x3 stride-2
    ConvBNReLU (in -> hidden -> hidden), AvgPool2d(2), flatten, Linear(hidden, num_classes).
    The coarsest map must be 5..12 px (CIFAR 32 px: 8x8; ImageNet 224 px: 7x7) so that 1x1 remains
    (:func:`classifier_takes`)."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, backend: str = "auto") -> None:
        super().__init__()
        self.m = nn.Sequential(
            ConvBNReLU(in_channels, hidden, 3, 2, 1, backend=backend),
            ConvBNReLU(hidden, hidden, 3, 2, 1, backend=backend),
            nn.AvgPool2d(2),
        )
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, x: Union[Features, torch.Tensor]) -> torch.Tensor:
        """Per-scale maps (uses the last, coarsest) or that map alone -> logits [N, num_classes]."""
        if not isinstance(x, torch.Tensor):
            x = x[-1]
        return self.linear(self.m(x).flatten(1))


def coarsest_size(size: int, dataset: str, n_scales: int) -> int:
    """Height (or width) of the coarsest scale for images of ``size`` px: the ImageNet stem divides
    by 4 (stride-2 conv, stride-2 max-pool), every further scale by 2 (stride-2 3x3 convs, pad 1:
    ceil)."""
    for _ in range((2 if dataset == "imagenet" else 0) + n_scales - 1):
        size = -(-size // 2)
    return size


def classifier_takes(size: int) -> bool:
    """Whether an :class:`MSDClassifier` takes a coarsest map of ``size`` px: two stride-2 convs and
    AvgPool2d(2) must leave 1x1 for its Linear (size 5..12)."""
    return -(-size // 4) // 2 == 1


# ----------------------------------------------------------------------------------------------
# schedule: layers per block, scales per layer, transitions
# ----------------------------------------------------------------------------------------------

def block_steps(n_blocks: int, base: int, step: int, step_mode: str) -> List[int]:
    """Layers per block: ``base`` first, then ``step`` ('even') or ``step * b + 1`` ('lin_grow') for block b >= 1."""
    return [base] + [step if step_mode == "even" else step * b + 1 for b in range(1, n_blocks)]


def layer_scales(layer: int, n_layers: int, n_scales: int, prune: str) -> Tuple[int, int]:
    """(in_scales, out_scales) of layer ``layer`` (1-based, counted over the whole network).

    'max': the finest scale is dropped every ceil(n_layers / n_scales) layers;
    'min': scales are dropped only near the end, so that the last layer keeps one.
    """
    if prune == "min":
        return min(n_scales, n_layers - layer + 2), min(n_scales, n_layers - layer + 1)
    interval = math.ceil(n_layers / n_scales)
    return n_scales - max(0, layer - 2) // interval, n_scales - (layer - 1) // interval


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------

def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"MSDNet: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _factor_list(name: str, value: object) -> List[int]:
    if isinstance(value, str):  # the official command-line form, e.g. "1-2-4"
        try:
            value = [int(v) for v in value.split("-")]
        except ValueError:
            raise ValueError(f"MSDNet: {name} must be a list of ints >= 1 or a string like '1-2-4', got {value!r}")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"MSDNet: {name} must be a non-empty list of ints >= 1, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"MSDNet: {name} must be a non-empty list of ints >= 1, got {value!r}")
    return list(value)


class MSDNet(EarlyExitModel):
    """Multi-Scale Dense Network; hyperparameters one to one with the official ``args``.

    The official names of the arguments are in brackets.

    Args:
        n_blocks: number of blocks = number of exits (nBlocks).
        n_channels: stem width at scale 0; scale s has ``n_channels * gr_factor[s]`` (nChannels).
        base: layers in block 0 (base).
        step: with step_mode (stepmode), the layers in block b >= 1: ``step`` ('even') or
            ``step * b + 1`` ('lin_grow') (step).
        step_mode: 'even' or 'lin_grow' (stepmode).
        growth_rate: channels added per layer at scale 0, ``growth_rate * gr_factor[s]`` at s (growthRate).
        gr_factor: per-scale width factors, a list or the official string like ``"1-2-4"``;
            ``n_scales = len(gr_factor)`` (grFactor).
        bn_factor: per-scale bottleneck factors, likewise (bnFactor).
        bottleneck: a 1x1 bottleneck (width ``min(in, bn_factor[s] * out)``) before each 3x3 (bottleneck).
        prune: 'max' or 'min' scale-dropping rule, see :func:`layer_scales` (prune).
        reduction: transitions compress the base width to ``floor(reduction * n_in)``, inserted after
            each scale drop for 'max', at 1/3 and 2/3 of the layers for 'min'; 0: none (reduction).
        num_classes: classes (the official code takes 10 / 100 / 1000 from the data set name).
        dataset: 'cifar' (3x3 stem, 128-wide classifiers, 32 px) or 'imagenet' (7x7 stem, classifiers
            as wide as their input, 224 px). The model takes images [B, in_channels, 32, 32] or
            [B, in_channels, 224, 224] in the parameters' dtype (``input_shape``, checked by forward
            and infer: the classifiers' fixed pooling leaves their Linear 1x1 only near that size).
            Where the scales leave the classifiers other than 1x1 at that size (not 3 CIFAR or 4
            ImageNet scales), the size is free.
        in_channels: image channels (3 in the official code; 1 for grey images such as Fashion-MNIST).
        image_size: the image size the model takes, when not the data set's 32 / 224 px (e.g. 28 for
            MNIST); with 3 CIFAR or 4 ImageNet scales it must leave the classifiers' Linear 1x1.
        backend: sets the compute path of every ConvBNReLU / BottleneckConv and the gate ops of
            :meth:`infer` (see :mod:`eexit.nn.execution`); "reference" runs everything in plain PyTorch.

    ``model(x)`` returns every exit's logits (official semantics); ``model.infer(x, thresholds,
    criterion)`` runs real sample-level early exit (:class:`eexit.nn.EarlyExitModel`).
    """

    def __init__(self, n_blocks: int, n_channels: int, base: int, step: int, step_mode: str, growth_rate: int,
                 gr_factor: Sequence[int], bn_factor: Sequence[int], *, num_classes: int, dataset: str,
                 bottleneck: bool = True, prune: str = "max", reduction: float = 0.5, in_channels: int = 3,
                 image_size: Optional[int] = None, backend: str = "auto") -> None:
        super().__init__(backend)  # checks backend, sets gate_ops
        _positive_int("n_blocks", n_blocks)
        _positive_int("n_channels", n_channels)
        _positive_int("base", base)
        if step_mode not in STEP_MODES:
            raise ValueError(f"MSDNet: step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        _positive_int("step", step, 1 if step_mode == "even" else 0)
        _positive_int("growth_rate", growth_rate)
        gr_factor, bn_factor = _factor_list("gr_factor", gr_factor), _factor_list("bn_factor", bn_factor)
        if len(bn_factor) != len(gr_factor):
            raise ValueError(f"MSDNet: bn_factor needs one entry per scale (len(gr_factor) = {len(gr_factor)}), "
                             f"got {bn_factor}")
        odd = [s for s in range(1, len(gr_factor)) if growth_rate * gr_factor[s] % 2]
        if odd:
            raise ValueError(f"MSDNet: growth_rate * gr_factor[s] must be even for s >= 1 (split between the "
                             f"strided and the normal conv), odd at scales {odd}")
        if not isinstance(bottleneck, bool):
            raise ValueError(f"MSDNet: bottleneck must be a bool, got {bottleneck!r}")
        if prune not in PRUNE_RULES:
            raise ValueError(f"MSDNet: prune must be one of {PRUNE_RULES}, got {prune!r}")
        if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 <= reduction <= 1:
            raise ValueError(f"MSDNet: reduction must be a number in [0, 1], got {reduction!r}")
        _positive_int("num_classes", num_classes)
        _positive_int("in_channels", in_channels)
        if image_size is not None:
            _positive_int("image_size", image_size)
        if dataset not in DATASETS:
            raise ValueError(f"MSDNet: dataset must be one of {DATASETS}, got {dataset!r}")

        self.config: Dict[str, Any] = dict(
            n_blocks=n_blocks, n_channels=n_channels, base=base, step=step, step_mode=step_mode,
            growth_rate=growth_rate, gr_factor=gr_factor, bn_factor=bn_factor, bottleneck=bottleneck,
            prune=prune, reduction=reduction, num_classes=num_classes, dataset=dataset, in_channels=in_channels,
            image_size=image_size,
        )
        self.n_blocks, self.n_scales, self.num_classes = n_blocks, len(gr_factor), num_classes
        self.steps = block_steps(n_blocks, base, step, step_mode)
        n_layers = sum(self.steps)

        self.blocks = nn.ModuleList()
        self.classifier = nn.ModuleList()
        n_in, layer = n_channels, 0
        for n_steps in self.steps:
            units: List[nn.Module] = [MSDStem(n_channels, gr_factor, dataset, backend, in_channels)] if layer == 0 \
                else []
            for _ in range(n_steps):
                layer += 1
                in_scales, out_scales = layer_scales(layer, n_layers, self.n_scales, prune)
                units.append(MSDLayer(n_in, growth_rate, gr_factor, bn_factor, bottleneck, in_scales, out_scales,
                                      backend))
                n_in += growth_rate
                if prune == "max":
                    transition = in_scales > out_scales and reduction > 0
                else:
                    transition = reduction > 0 and layer in (n_layers // 3, 2 * n_layers // 3)
                if transition:
                    n_out = math.floor(reduction * n_in)
                    if n_out < 1:
                        raise ValueError(f"MSDNet: reduction={reduction} leaves no channels at layer {layer} "
                                         f"(floor({reduction} * {n_in}) = 0)")
                    units.append(MSDTransition(n_in, n_out, gr_factor[self.n_scales - out_scales:], backend))
                    n_in = n_out
            self.blocks.append(MSDBlock(*units))
            c_last = n_in * gr_factor[-1]
            hidden = 128 if dataset == "cifar" else c_last
            self.classifier.append(MSDClassifier(c_last, hidden, num_classes, backend))
        fixed = image_size or IMAGE_SIZE[dataset]
        if not classifier_takes(coarsest_size(fixed, dataset, self.n_scales)):
            if image_size is not None and classifier_takes(coarsest_size(IMAGE_SIZE[dataset], dataset, self.n_scales)):
                raise ValueError(f"MSDNet: image_size={image_size} leaves the classifiers' Linear a map wider than "
                                 f"1x1 with {self.n_scales} scales; {IMAGE_SIZE[dataset]} works")
            fixed = None
        self.declare_input((in_channels, fixed, fixed), "parameters", f"MSDNet ({DATASET_NAMES[dataset]})")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    def exit_stages(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """(stages, exits), one of each per exit: stage 0 maps the image [N, 3, H, W] and stage k >= 1
        the previous stage's list of per-scale maps to a list of per-scale maps; exit k maps stage k's
        list to logits [N, num_classes]. ``forward`` is exactly this loop."""
        return list(self.blocks), list(self.classifier)

    # -- official checkpoints ------------------------------------------------------------------

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> "MSDNet":
        """Loads an official state_dict (keys with or without DataParallel's ``module.`` prefix).

        Missing ``num_batches_tracked`` buffers (checkpoints from PyTorch < 0.4.1) keep their value;
        any other missing or unexpected key, or a shape mismatch, raises ValueError naming the first
        offending keys with expected / got shapes, and nothing is loaded. Returns self.
        """
        state = strip_prefix(state_dict)
        problems = mismatch_report(self.state_dict(), state, optional=lambda k: k.endswith("num_batches_tracked"))
        if problems:
            raise ValueError("\n  ".join([f"MSDNet.load_official: the state_dict does not match "
                                           f"MSDNet({self.extra_repr()})"] + problems))
        self.load_state_dict(state, strict=False)
        return self

    @classmethod
    def load_official(cls, source: Union[str, os.PathLike, Mapping[str, Any]], *, preset: Optional[str] = None,
                      map_location: Union[str, torch.device] = "cpu", **config: Any) -> "MSDNet":
        """Builds an MSDNet and loads weights saved by the official code; returns it in eval mode.

        source: a path to a file saved by the official ``main.py`` (a dict of ``state_dict``, ``epoch``,
            ``best_prec1`` and ``optimizer``, keys prefixed ``module.``; read with
            ``torch.load(weights_only=True)``), such a dict, or a bare state_dict.
        preset: a name in ``PRESETS`` ('cifar_anytime', 'cifar_budgeted', 'imagenet_step4',
            'imagenet_step6', 'imagenet_step7'); ``config`` then holds that preset's keyword arguments
            (num_classes, backend). Without a preset ``config`` is the :class:`MSDNet` constructor's.

        Mismatches raise ValueError (see :meth:`load_official_state_dict`).
        """
        if isinstance(source, (str, os.PathLike)):
            source = read_torch(source, "a torch file saved by the official MSDNet code (e.g. model_best.pth.tar) "
                                "or a state_dict", map_location)
        if not isinstance(source, Mapping):
            raise ValueError(f"MSDNet.load_official: expected a state_dict or a checkpoint dict, "
                             f"got {type(source).__name__}")
        state = source.get("state_dict", source)
        if not isinstance(state, Mapping):
            raise ValueError("MSDNet.load_official: the checkpoint's 'state_dict' entry is not a mapping")
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"MSDNet.load_official: unknown preset {preset!r}; one of {sorted(PRESETS)}")
            model = PRESETS[preset](**config)
        else:
            model = cls(**config)
        return model.load_official_state_dict(state).eval()


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> Dict[str, Any]:
    """The state_dict with ``prefix`` (DataParallel's ``module.``) removed from the keys that carry it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


# ----------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------

def msdnet_cifar_anytime(num_classes: int = 100, backend: str = "auto") -> MSDNet:
    """CIFAR anytime-prediction MSDNet: 7 blocks of 4, 2, 2, ... layers (16 in all), 3 scales.

    nBlocks 7, stepmode even, step 2, base 4, nChannels 16: the official README's CIFAR-100 anytime
    command; growthRate 6, grFactor / bnFactor 1-2-4, prune max, reduction 0.5, bottleneck on:
    ``args.py`` defaults (the paper's 16/32/64 stem channels and growth 6/12/24 per scale).
    """
    return MSDNet(7, 16, 4, 2, "even", 6, [1, 2, 4], [1, 2, 4], num_classes=num_classes, dataset="cifar",
                  backend=backend)


def msdnet_cifar_budgeted(num_classes: int = 100, backend: str = "auto") -> MSDNet:
    """CIFAR budgeted-batch MSDNet: 5 blocks of 1, 2, 3, 4, 5 layers (15 in all), 3 scales.

    nBlocks 5, stepmode lin_grow, step 1, base 1, nChannels 16: the official README's CIFAR-100
    "efficient batch computation" command; everything else as :func:`msdnet_cifar_anytime`.
    """
    return MSDNet(5, 16, 1, 1, "lin_grow", 6, [1, 2, 4], [1, 2, 4], num_classes=num_classes, dataset="cifar",
                  backend=backend)


def msdnet_imagenet(step: int = 4, num_classes: int = 1000, backend: str = "auto") -> MSDNet:
    """ImageNet MSDNet with 5 blocks of ``step`` layers each, 4 scales, 224 px input.

    step 4: the official README's ImageNet command (nBlocks 5, stepmode even, step 4, base 4,
    nChannels 32, growthRate 16, grFactor / bnFactor 1-2-4-4). step 7: the repository's
    ``run_imagenet.sh`` (commit aa62bd1: ``--step 7 --base 7``, otherwise the same), whose per-exit
    FLOPs (615.69 ... 3253.79 M) this model reproduces exactly (tests/test_msdnet.py). step 6: the same
    rule, base = step (the paper's ImageNet models use k = 4, 6, 7 layers per block).
    """
    if step not in (4, 6, 7):
        raise ValueError(f"msdnet_imagenet: step must be 4, 6 or 7 (the released models), got {step!r}; "
                         "build other variants with MSDNet(...)")
    return MSDNet(5, 32, step, step, "even", 16, [1, 2, 4, 4], [1, 2, 4, 4], num_classes=num_classes,
                  dataset="imagenet", backend=backend)


PRESETS: Dict[str, Callable[..., MSDNet]] = {
    "cifar_anytime": msdnet_cifar_anytime,
    "cifar_budgeted": msdnet_cifar_budgeted,
    "imagenet_step4": functools.partial(msdnet_imagenet, 4),
    "imagenet_step6": functools.partial(msdnet_imagenet, 6),
    "imagenet_step7": functools.partial(msdnet_imagenet, 7),
}
