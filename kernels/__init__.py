"""Triton kernels of eexit, installed as ``eexit.kernels``.

:func:`conv2d_nhwc` and :func:`bottleneck_nhwc` (module :mod:`eexit.kernels.conv`) are the
dense-concatenate convolution kernels. Importing this package never requires Triton: they
are loaded on first access.
"""
__all__ = ["bottleneck_nhwc", "conv2d_nhwc"]


def __getattr__(name):
    if name in __all__:
        from . import conv  # needs Triton

        return getattr(conv, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
