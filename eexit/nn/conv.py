"""Conv -> BatchNorm -> ReLU stacks with MSDNet's layout (``net.{0,1,3,4}`` keys)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from eexit import ops
from eexit._layout import memory_format_of
from eexit.nn.execution import ComputePathModule, grad_off
from eexit.nn.folding import bn_affine, bn_sources, fold_conv_bn
from eexit.nn.packed_conv import PackedConv, run_chain


def triton_supports(conv: nn.Conv2d) -> bool:
    """Whether the Triton conv kernel covers this conv's geometry."""
    return (
        conv.kernel_size in ((1, 1), (3, 3)) and conv.stride in ((1, 1), (2, 2))
        and conv.padding[0] == conv.padding[1] and conv.dilation == (1, 1) and conv.groups == 1
    )


class ConvStack(ComputePathModule):
    """Base of the modules whose ``net`` is a sequence of Conv2d -> BatchNorm2d -> ReLU units."""

    net: nn.Sequential

    @property
    def out_channels(self) -> int:
        return self.units()[-1][0].out_channels

    def units(self) -> List[Tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(m, self.net[i + 1]) for i, m in enumerate(self.net) if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C_in, H, W] -> [N, C_out, H', W'], in x's memory format and dtype."""
        path = self.resolve_path(x)
        if path == "reference":
            return self.net(x)
        with grad_off():
            if path == "triton":
                units = self.units()
                if all(triton_supports(c) for c, _ in units):
                    return self._triton(x, units)
            # every parameter and buffer of the stack: the folds' sources, gathered without units()
            sources = [t for m in self.net._modules.values() for d in (m._parameters, m._buffers)
                       for t in d.values() if t is not None]
            chain = self._fold.get(f"chain:{x.dtype}", sources, lambda: [
                PackedConv(conv, *fold_conv_bn(conv, bn, x.dtype), relu=True) for conv, bn in self.units()])
            return run_chain(x, chain)

    def into(self, x: torch.Tensor, c_in: int, out: torch.Tensor, c_out0: int) -> None:
        """``out[:, c_out0 : c_out0 + C_out] = self(x[:, :c_in])``, for concat buffers x and out (they
        may be one tensor when the windows are disjoint). On the Triton path with channels_last
        buffers the kernels read and write those channel windows in place (no slice copies);
        otherwise the result is computed and copied in (:func:`eexit.ops.append_channels`)."""
        units = self.units()
        if units[0][0].in_channels != c_in:
            raise ValueError(f"{type(self).__name__}.into: c_in must be {units[0][0].in_channels}, got {c_in}")
        last = torch.channels_last
        if self.resolve_path(x) == "triton" and all(triton_supports(c) for c, _ in units) \
                and x.is_contiguous(memory_format=last) and out.is_contiguous(memory_format=last):
            with torch.no_grad():
                self._triton(x, units, out, c_out0)
            return
        ops.append_channels(out, self(x[:, :c_in]), c_out0)

    def _triton(self, x: torch.Tensor, units, out: Optional[torch.Tensor] = None, c_out0: int = 0) -> torch.Tensor:
        """The Triton kernels on x's first C_in channels; into ``out``'s window at ``c_out0`` when given
        (channels_last, returned as is), else a new tensor in x's memory format."""
        from eexit import kernels

        fmt = memory_format_of(x)
        x = x.contiguous(memory_format=torch.channels_last)
        params = [
            self._fold.get(f"triton{i}:{x.dtype}", [conv.weight, *bn_sources(bn)],
                           lambda conv=conv, bn=bn: (kernels.conv_weight(conv.weight.to(x.dtype)),
                                                     *bn_affine(bn, conv.bias)))
            for i, (conv, bn) in enumerate(units)
        ]
        first, last = units[0][0], units[-1][0]
        if len(units) == 2 and first.kernel_size == (1, 1) and first.stride == (1, 1) and first.padding == (0, 0) \
                and last.kernel_size == (3, 3) and last.padding == (1, 1):
            (w1, s1, b1), (w2, s2, b2) = params
            y = kernels.bottleneck_nhwc(x, w1, s1, b1, w2, s2, b2, stride=last.stride[0], out=out, c_out0=c_out0)
        else:
            y = x
            for i, ((conv, _), (w, s, b)) in enumerate(zip(units, params)):
                final = i == len(units) - 1
                y = kernels.conv2d_nhwc(y, w, s, b, stride=conv.stride[0], padding=conv.padding[0], relu=True,
                                        out=out if final else None, c_out0=c_out0 if final else 0)
        return y if out is not None else y.contiguous(memory_format=fmt)


class ConvBNReLU(ConvStack):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU: MSDNet's ConvBasic (keys ``net.0``, ``net.1``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, backend: str = "auto") -> None:
        super().__init__(backend)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class BottleneckConv(ConvStack):
    """MSDNet's ConvBN: with ``bottleneck``, a 1x1 conv to ``min(in_channels, bn_width * out_channels)``
    + BN + ReLU, then a 3x3 conv (stride 1 for kind "normal", 2 for "down", padding 1) + BN + ReLU.
    Keys ``net.{0,1,3,4}`` with the bottleneck, ``net.{0,1}`` without."""

    def __init__(self, in_channels: int, out_channels: int, kind: str = "normal", bottleneck: bool = True,
                 bn_width: int = 4, backend: str = "auto") -> None:
        super().__init__(backend)
        if kind not in ("normal", "down"):
            raise ValueError(f"kind must be 'normal' or 'down', got {kind!r}")
        layers: List[nn.Module] = []
        inner = in_channels
        if bottleneck:
            inner = min(in_channels, bn_width * out_channels)
            layers += [nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True)]
        stride = 1 if kind == "normal" else 2
        layers += [nn.Conv2d(inner, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
                   nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
