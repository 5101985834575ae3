"""eexit's fused ops, backed by the compiled extension ``eexit._C``.

``exit_gate``, ``compact``, ``append_channels``, ``max_pool2d`` and ``direct_conv2d`` are
``torch.library`` ops (``torch.ops.eexit.*``) with fake implementations, so they run under
``torch.compile(fullgraph=True)``. Their semantics are defined by :mod:`eexit.reference`
(``max_pool2d``'s by ``torch.nn.functional.max_pool2d``, ``direct_conv2d``'s by
``torch.nn.functional.conv2d``). Without a built extension they fall back
to the reference, with one warning; :func:`has_extension` says which is in use.
The fused ops are inference-only: they refuse inputs that require grad while grad mode is on.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from eexit import reference
from eexit._checks import (
    as_threshold,
    check_append_args,
    check_compact_args,
    check_criterion,
    check_direct_conv_args,
    check_gate_args,
    check_logits,
    check_lrn_args,
    check_lrn_values,
    check_max_pool_args,
    conv_padding,
    pool_pairs,
)
from eexit._layout import memory_format_of
from eexit.reference import ExitDecision

__all__ = ["ExitDecision", "append_channels", "compact", "direct_conv2d", "exit_gate", "has_extension",
           "local_response_norm", "max_pool2d"]

try:
    from eexit import _C  # noqa: F401  (loading it registers torch.ops.eexit)

    _EXTENSION_ERROR = None
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    _EXTENSION_ERROR = err
    warnings.warn(
        f"eexit: the compiled extension eexit._C is not available ({err}); eexit.ops uses the "
        "pure-PyTorch reference instead (correct but slow). Build it with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_extension() -> bool:
    """True when eexit.ops runs the compiled extension, False when it falls back to the reference."""
    return _EXTENSION_ERROR is None


def _refuse_grad(op: str, tensors: Sequence[torch.Tensor], train_with: Optional[str] = None) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(
            f"eexit.ops.{op} is inference-only and got a tensor that requires grad; "
            f"use {train_with or 'eexit.reference.' + op} to train, or run under torch.no_grad()/torch.inference_mode()"
        )


def exit_gate(logits: torch.Tensor, threshold: float, criterion: str = "confidence") -> ExitDecision:
    """Fused exit gate on logits [N, C] (float32/float16/bfloat16, any strides).

    Returns ExitDecision(exit_idx int64 [E], keep_idx int64 [N-E], pred int64 [N], score float32 [N]);
    see :func:`eexit.reference.exit_gate` for the exact rule and non-finite handling.
    """
    if not has_extension():
        return reference.exit_gate(logits, threshold, criterion)
    # Types here; shapes, dtypes and ranges in C++ (same messages and exception types).
    if type(threshold) is not float:
        threshold = as_threshold(threshold)
    if type(criterion) is not str:
        check_criterion(criterion)
    if not isinstance(logits, torch.Tensor):
        check_logits(logits)
    if logits.requires_grad:
        _refuse_grad("exit_gate", (logits,))
    return ExitDecision._make(_exit_gate_op(logits, threshold, criterion))


def compact(tensors: Sequence[torch.Tensor], index: torch.Tensor) -> List[torch.Tensor]:
    """Rows ``index`` (int64 [K], on the tensors' device) of every tensor, in one pass.

    Tensors may have any shape (rows on dim 0, as many in every tensor: ValueError otherwise) and
    dtype; a contiguous or channels_last input gives an output in the same memory format.
    Out-of-range indices raise IndexError on CPU and a device-side assert on CUDA.
    """
    check_compact_args(tensors, index)
    if not has_extension():
        return reference.compact(tensors, index)
    _refuse_grad("compact", tensors)
    return torch.ops.eexit.compact.default(list(tensors), index)


def append_channels(buf: torch.Tensor, src: torch.Tensor, c0: int, pre: Optional[torch.Tensor] = None,
                    scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None) -> None:
    """In place: ``buf[:, c0 : c0 + C_src] = src`` and, with ``pre``, ``pre = relu(buf[:, :c0 + C_src]
    * scale + shift)`` (float32 math), in one pass over the pixels; see
    :func:`eexit.reference.append_channels`. This is how a dense block appends a layer's output to its
    concat buffer while producing the next layer's BN-ReLU input. The CPU kernel needs channels
    innermost (channels_last tensors or their channel windows); other layouts and devices run the
    same op through ATen ops."""
    if not has_extension():
        return reference.append_channels(buf, src, c0, pre, scale, shift)
    if buf.requires_grad or src.requires_grad:
        _refuse_grad("append_channels", (buf, src))
    torch.ops.eexit.append_channels.default(buf, src, c0, pre, scale, shift)


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False) -> torch.Tensor:
    """``torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)`` (dilation 1,
    no indices), equal to it bit for bit (signed zeros included) except that a NaN's payload may
    differ: any NaN in a window gives a NaN.

    x: [N, C, H, W] or [C, H, W] (N may be 0), float32/float64/float16/bfloat16, any strides;
    kernel_size, stride (None: kernel_size) and padding: an int or an (h, w) pair, padding at most
    half the kernel. The output keeps x's memory format when x is contiguous or channels_last
    (contiguous otherwise). On CPU it is several times faster than PyTorch's pooling of NCHW tensors
    (float32: vectors along the output row for windows 2 or 3 wide at stride 2, along the channels
    for channels_last tensors).
    """
    k, s, p = pool_pairs(kernel_size, stride, padding, ceil_mode)
    if not has_extension():
        check_max_pool_args(x, k, s, p, ceil_mode)
        return F.max_pool2d(x, k, s, p, ceil_mode=ceil_mode)
    if not isinstance(x, torch.Tensor):
        check_max_pool_args(x, k, s, p, ceil_mode)
    if x.requires_grad:
        _refuse_grad("max_pool2d", (x,), train_with="torch.nn.functional.max_pool2d")
    return _max_pool2d_op(x, k, s, p, ceil_mode)


def direct_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  padding=0) -> torch.Tensor:
    """``torch.nn.functional.conv2d(x, weight, bias, stride=1, padding=padding)`` (dilation 1, one
    group) by direct convolution on CPU, in float32 arithmetic (each output rounded once to x's
    dtype): for layers with few channels (LeNet-like, C_in * KH * KW of tens), where PyTorch's
    GEMM-shaped CPU convolution runs far below the machine's multiply-add rate, and at small
    batches, where its per-call set-up dominates. :class:`eexit.nn.Conv2d` picks it by a measured rule.

    x: [N, C_in, H, W] or [C_in, H, W] (N may be 0), float32/float16/bfloat16, any strides;
    weight [C_out, C_in, KH, KW] and bias [C_out] (or None) of x's dtype and device; padding an
    int or an (h, w) pair >= 0. The output keeps x's memory format when x is contiguous or
    channels_last. NaN and inf propagate as in any sum of products. On other devices than the
    CPU it runs ``F.conv2d`` (cuDNN on CUDA) after the same checks.
    """
    p = conv_padding(padding)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not has_extension() or not all(isinstance(t, torch.Tensor) for t in tensors) or x.device.type != "cpu":
        check_direct_conv_args(x, weight, bias, p)  # types, shapes; then the reference off the CPU
        return F.conv2d(x, weight, bias, padding=p)
    if any(t.requires_grad for t in tensors):
        _refuse_grad("direct_conv2d", tensors, train_with="torch.nn.functional.conv2d")
    return _direct_conv2d_op(x, weight, bias, p)


def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    """``torch.nn.functional.local_response_norm(x, size, alpha, beta, k)`` across the channels of
    images, in one pass on CPU: ``x / (k + alpha / size * s) ** beta`` with s the sum of x^2 over the
    channels c - size // 2 .. c + (size - 1) // 2 that exist. Float32 arithmetic, one rounding to
    x's dtype; a NaN or inf reaches the outputs whose windows hold it, as in PyTorch's.

    x: [N, C, H, W] (N may be 0; rank 4 only, as PyTorch's reads a 3-D tensor as [N, C, L]),
    float32/float16/bfloat16, any strides; size an int >= 1; alpha, beta and k real numbers. The
    output keeps x's memory format when x is contiguous or channels_last. On other devices than the
    CPU it runs ``F.local_response_norm`` after the same checks.
    """
    if not has_extension() or not isinstance(x, torch.Tensor) or x.device.type != "cpu":
        check_lrn_args(x, size, alpha, beta, k)
        return F.local_response_norm(x, size, alpha, beta, k)
    check_lrn_values(size, alpha, beta, k)  # x: checked by the op (csrc/checks.cpp, the same messages)
    if x.requires_grad:
        _refuse_grad("local_response_norm", (x,), train_with="torch.nn.functional.local_response_norm")
    return _lrn_op(x, size, float(alpha), float(beta), float(k))


if has_extension():
    _exit_gate_op = torch.ops.eexit.exit_gate.default

    @torch.library.register_fake("eexit::exit_gate")
    def _exit_gate_fake(logits, threshold, criterion="confidence"):
        check_gate_args(logits, threshold, criterion)
        n = logits.shape[0]
        # the exit and keep counts are two unbacked sizes that sum to n: with n - n_exit, Inductor
        # 2.11 clamped n_exit's size hint to n and divided by the resulting zero hint of the keep
        # count (ZeroDivisionError in its CPU code generator; found on a GPU image with torch 2.11)
        ctx = torch.library.get_ctx()
        n_exit, n_keep = ctx.new_dynamic_size(), ctx.new_dynamic_size()
        torch._check(n_exit <= n)
        torch._check(n_keep <= n)
        torch._check(n_exit + n_keep == n)
        idx = dict(dtype=torch.int64, device=logits.device)
        return (
            torch.empty((n_exit,), **idx),
            torch.empty((n_keep,), **idx),
            torch.empty((n,), **idx),
            torch.empty((n,), dtype=torch.float32, device=logits.device),
        )

    _lrn_op = torch.ops.eexit.local_response_norm.default

    @torch.library.register_fake("eexit::local_response_norm")
    def _lrn_fake(x, size, alpha, beta, k):
        check_lrn_args(x, size, alpha, beta, k)
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))

    _max_pool2d_op = torch.ops.eexit.max_pool2d.default

    @torch.library.register_fake("eexit::max_pool2d")
    def _max_pool2d_fake(x, kernel_size, stride, padding, ceil_mode):
        h_out, w_out = check_max_pool_args(x, kernel_size, stride, padding, ceil_mode)
        return torch.empty((*x.shape[:-2], h_out, w_out), dtype=x.dtype, device=x.device,
                           memory_format=memory_format_of(x))

    _direct_conv2d_op = torch.ops.eexit.direct_conv2d.default

    @torch.library.register_fake("eexit::direct_conv2d")
    def _direct_conv2d_fake(x, weight, bias, padding):
        h_out, w_out = check_direct_conv_args(x, weight, bias, padding)
        return torch.empty((*x.shape[:-3], weight.shape[0], h_out, w_out), dtype=x.dtype, device=x.device,
                           memory_format=memory_format_of(x))

    @torch.library.register_fake("eexit::append_channels")
    def _append_channels_fake(buf, src, c0, pre=None, scale=None, shift=None):
        check_append_args(buf, src, c0, pre, scale, shift)

    @torch.library.register_fake("eexit::compact")
    def _compact_fake(tensors, index):
        check_compact_args(tensors, index)
        k = index.shape[0]
        return [
            torch.empty((k, *t.shape[1:]), dtype=t.dtype, device=t.device, memory_format=memory_format_of(t))
            for t in tensors
        ]
