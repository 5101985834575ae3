"""DenseNet-BC dense block: every layer reads the concatenation of everything before it."""
from __future__ import annotations

import re

import torch
from torch import nn

from eexit import ops
from eexit._layout import memory_format_of
from eexit.nn.execution import ComputePathModule
from eexit.nn.folding import bn_affine, bn_sources, fold_conv_bn
from eexit.nn.packed_conv import conv2d_onednn, to_packing_layout


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size * growth)-BN-ReLU-Conv3x3(growth) (torchvision's names)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        inner = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


def is_torchvision_dense_block(module: nn.Module) -> bool:
    """Whether ``module`` has the structure of torchvision's DenseNet ``_DenseBlock``: an nn.ModuleDict of
    ``denselayer1`` .. ``denselayerL`` (L >= 1), in that order. Checked by structure, so torchvision is not
    imported; :meth:`DenseConcatBlock.from_torchvision` checks the layers themselves."""
    return isinstance(module, nn.ModuleDict) and len(module) > 0 \
        and list(module.keys()) == [f"denselayer{i}" for i in range(1, len(module) + 1)]


def _conv_bn_geometry(m: nn.Module) -> tuple:
    """What of a DenseLayer child decides its math (BatchNorm's eps and momentum are read from the module)."""
    if isinstance(m, nn.Conv2d):
        return (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.bias is None, m.padding_mode)
    if isinstance(m, nn.BatchNorm2d):
        return (m.num_features, m.affine, m.track_running_stats)
    return ()


_TORCHVISION_KEY = re.compile(r"denselayer([1-9][0-9]*)\.(.+)", re.DOTALL)


def _load_torchvision_keys(module: nn.Module, state_dict, prefix: str, local_metadata, strict, missing_keys,
                           unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: torchvision's ``denselayerN.<rest>`` (N from 1) loads as ``layers.{N-1}.<rest>``."""
    for key in [k for k in state_dict if k.startswith(prefix + "denselayer")]:
        match = _TORCHVISION_KEY.fullmatch(key, len(prefix))
        if match is None:
            continue  # left as is: an unexpected key
        ours = f"{prefix}layers.{int(match[1]) - 1}.{match[2]}"
        if ours in state_dict:
            error_msgs.append(f"state_dict has both {key!r} and {ours!r} (the same entry in torchvision's and "
                              "eexit's key layouts)")
        else:
            state_dict[ours] = state_dict.pop(key)


class DenseConcatBlock(ComputePathModule):
    """``num_layers`` DenseNet-BC layers; returns [N, in_channels + num_layers * growth_rate, H, W].

    The reference concatenates with ``torch.cat`` at every layer (O(L^2) bytes copied). The fused
    paths write each layer's output into its channel slice of one preallocated buffer: on the folded
    path :func:`eexit.ops.append_channels` copies each new output in and writes the next layer's
    BN1-ReLU input (one reused scratch) in the same pass, and BN2 is folded into conv1 (float32 CPU
    input runs channels_last inside, the packed convolutions' layout, and the output is copied back
    into x's format: on contiguous input the reference takes 1.06-3.06x the fused block's time this
    way, 0.88-1.37x when the block ran NCHW, ``benchmarks/results/memory_formats-cpu-2026-12-05.md``);
    with Triton the BN-ReLU prologue, folded BN2 + ReLU and the 3x3 conv run in two kernel launches
    per layer.

    ``load_state_dict`` also takes torchvision's ``_DenseBlock`` keys (``denselayerN.*``, N from 1, for
    ``layers.{N-1}.*``), so a torchvision DenseNet checkpoint loads after :meth:`from_torchvision`.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, bn_size: int = 4,
                 backend: str = "auto") -> None:
        super().__init__(backend)
        if min(in_channels, growth_rate, num_layers, bn_size) < 1:
            raise ValueError("in_channels, growth_rate, num_layers and bn_size must all be >= 1")
        self.in_channels, self.growth_rate = in_channels, growth_rate
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
        )
        self.register_load_state_dict_pre_hook(_load_torchvision_keys)

    @classmethod
    def from_torchvision(cls, block: nn.Module) -> DenseConcatBlock:
        """The block computing what torchvision's DenseNet ``_DenseBlock`` ``block`` computes
        ([N, C, H, W] -> [N, C + L * growth_rate, H, W]), built from block's own BatchNorm2d, ReLU and
        Conv2d modules: the same parameters and buffers (shared, on their device and dtype), and the
        training mode of block and of each of its modules.

        ``memory_efficient=True`` (gradient checkpointing) is accepted: it recomputes the same values, so
        outputs and gradients are the same. This block keeps the activations instead, and updates norm1's
        running statistics once per training step, as torchvision does without checkpointing (its
        recomputation updates them a second time).

        ValueError for what it cannot compute exactly: not a dense block (see
        :func:`is_torchvision_dense_block`), ``drop_rate > 0`` (no dropout here), layers with other
        modules, convolution geometries or channel counts than :class:`DenseLayer`'s for the first
        layer's input channels, growth rate and bottleneck width.
        """
        if not is_torchvision_dense_block(block):
            raise ValueError("block must be a torchvision DenseNet _DenseBlock: an nn.ModuleDict of denselayer1 .. "
                             f"denselayerL (L >= 1), got {type(block).__name__}"
                             + (f" with keys {list(block.keys())}" if isinstance(block, nn.ModuleDict) else ""))
        theirs = list(block.values())
        try:
            c0, inner, growth = theirs[0].norm1.num_features, theirs[0].conv1.out_channels, theirs[0].conv2.out_channels
        except AttributeError as err:
            raise ValueError(f"block: denselayer1 is not a torchvision _DenseLayer ({err})") from None
        if growth < 1 or inner % growth:
            raise ValueError(f"block: denselayer1's bottleneck width {inner} is not a multiple of its growth rate "
                             f"{growth}")
        with torch.device("meta"):  # a template: every module is replaced by block's own
            new = cls(c0, growth, len(theirs), inner // growth).train(block.training)
        for i, (mine, layer) in enumerate(zip(new.layers, theirs), 1):
            if float(getattr(layer, "drop_rate", 0.0)) > 0:
                raise ValueError(f"block: denselayer{i} has drop_rate={layer.drop_rate}; DenseConcatBlock has no "
                                 "dropout (build the DenseNet with drop_rate=0)")
            if set(layer._modules) != set(mine._modules):
                raise ValueError(f"block: denselayer{i} has the modules {sorted(layer._modules)}, expected "
                                 f"{sorted(mine._modules)}")
            for name, want in mine.named_children():
                got = getattr(layer, name)
                if type(got) is not type(want) or _conv_bn_geometry(got) != _conv_bn_geometry(want):
                    raise ValueError(f"block: denselayer{i}.{name} is {got}, expected {want}")
                setattr(mine, name, got)
            mine.training = layer.training
        return new

    @property
    def out_channels(self) -> int:
        return self.in_channels + len(self.layers) * self.growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_channels, H, W] -> [N, out_channels, H, W], in x's memory format and dtype."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DenseConcatBlock: expected input [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        path = self.resolve_path(x)
        if path == "reference":
            features = [x]
            for layer in self.layers:
                features.append(layer(torch.cat(features, 1)))
            return torch.cat(features, 1)
        with torch.no_grad():
            return self._triton(x) if path == "triton" else self._folded(x)

    def _buffer(self, x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
        """The (uninitialised) concat buffer [N, out_channels, H, W] for input x."""
        n, _, h, w = x.shape
        return torch.empty((n, self.out_channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)

    def _folded(self, x: torch.Tensor) -> torch.Tensor:
        out_fmt = memory_format_of(x)
        x = to_packing_layout(x)  # float32 CPU: channels_last inside, for the packed convolutions
        fmt = memory_format_of(x)
        n, c0, h, w = x.shape
        g, dt = self.growth_rate, x.dtype
        buf = self._buffer(x, fmt)
        scratch = torch.empty(n * (self.out_channels - g) * h * w, dtype=dt, device=x.device)
        new, at = x, 0  # the channels not yet in buf, and where they go
        for i, layer in enumerate(self.layers):
            c = c0 + i * g
            s1, b1 = self._fold.get(f"pre{i}", bn_sources(layer.norm1), lambda ly=layer: bn_affine(ly.norm1))
            sources1 = [layer.conv1.weight, *bn_sources(layer.norm2)]
            w1, bias1 = self._fold.get(f"conv1_{i}:{dt}", sources1,
                                       lambda ly=layer: fold_conv_bn(ly.conv1, ly.norm2, dt))
            w2 = self._fold.get(f"conv2_{i}:{dt}:{fmt}", [layer.conv2.weight],
                                lambda ly=layer: ly.conv2.weight.to(dt).contiguous(memory_format=fmt))
            pre = scratch[: n * c * h * w]  # a dense [N, c, H, W] view of the reused scratch
            pre = pre.view(n, h, w, c).permute(0, 3, 1, 2) if fmt == torch.channels_last else pre.view(n, c, h, w)
            ops.append_channels(buf, new, at, pre, s1, b1)  # the copy and BN1-ReLU in one pass
            y = conv2d_onednn(pre, layer.conv1, w1, bias1, self._fold, f"conv1_{i}:packed", sources1, relu=True)
            new = conv2d_onednn(y, layer.conv2, w2, None, self._fold, f"conv2_{i}:packed", [layer.conv2.weight])
            at = c
        ops.append_channels(buf, new, at)
        return buf if fmt == out_fmt else buf.contiguous(memory_format=out_fmt)

    def _triton(self, x: torch.Tensor) -> torch.Tensor:
        from eexit import kernels

        fmt = memory_format_of(x)
        buf = self._buffer(x, torch.channels_last)
        buf[:, : x.shape[1]].copy_(x)
        g, dt = self.growth_rate, x.dtype
        for i, layer in enumerate(self.layers):
            c = self.in_channels + i * g
            s1, b1, w1, s2, b2, w2, one, zero = self._fold.get(
                f"triton{i}:{dt}",
                [layer.conv1.weight, layer.conv2.weight, *bn_sources(layer.norm1), *bn_sources(layer.norm2)],
                lambda ly=layer: (
                    *bn_affine(ly.norm1), kernels.conv_weight(ly.conv1.weight.to(dt)), *bn_affine(ly.norm2),
                    kernels.conv_weight(ly.conv2.weight.to(dt)),
                    torch.ones(g, device=x.device), torch.zeros(g, device=x.device),
                ),
            )
            kernels.bottleneck_nhwc(buf, w1, s2, b2, w2, one, zero, relu1=True, relu2=False, out=buf,
                                    c_in0=0, c_out0=c, in_scale=s1, in_shift=b1)
        return buf.contiguous(memory_format=fmt)
