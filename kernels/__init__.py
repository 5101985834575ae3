"""Triton kernels of eexit, installed as ``eexit.kernels``.

:func:`conv2d_nhwc` and :func:`bottleneck_nhwc` (module :mod:`eexit.kernels.conv`) are the
dense-concatenate convolution kernels, run as the ops ``torch.ops.eexit.conv2d_nhwc`` and
``torch.ops.eexit.bottleneck_nhwc``; :func:`conv_weight` prepares a weight in the layout they
read fastest. Importing this package never requires Triton: the module, and with it the ops,
is loaded on first access to any of them.
"""
__all__ = ["bottleneck_nhwc", "conv2d_nhwc", "conv_weight"]


def __getattr__(name):
    if name in __all__:
        from . import conv  # needs Triton; registers the ops

        return getattr(conv, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
