"""Argument checks shared by the reference ops and the fake (meta) implementations.

They mirror csrc/checks.cpp so that every backend rejects the same inputs with
the same exception type (ValueError / TypeError / IndexError). The Triton conv kernels'
suite (:func:`check_conv_args`, :func:`check_bottleneck_args`) runs in their Python
wrappers, their op bodies and their fake implementations alike.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch

CRITERIA = ("confidence", "entropy")
GATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_criterion(criterion: object) -> str:
    if not isinstance(criterion, str):
        raise TypeError(f"exit_gate: criterion must be a str, got {type(criterion).__name__}")
    if criterion not in CRITERIA:
        raise ValueError(f"exit_gate: criterion must be 'confidence' or 'entropy', got {criterion!r}")
    return criterion


def as_threshold(threshold: object) -> float:
    """A real number or one-element real tensor as a float; TypeError otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (numbers.Real, torch.Tensor)):
        raise TypeError(f"exit_gate: threshold must be a real number, got {type(threshold).__name__}")
    if isinstance(threshold, torch.Tensor):
        if threshold.numel() != 1 or threshold.is_complex() or threshold.dtype == torch.bool:
            raise TypeError(
                f"exit_gate: threshold must be a real scalar, got a tensor of shape {tuple(threshold.shape)}")
        threshold = threshold.item()
    return float(threshold)


def check_threshold(threshold: object, criterion: str) -> float:
    """Returns the threshold as a float; confidence needs [0, 1], entropy >= 0 (nats)."""
    t = as_threshold(threshold)
    if criterion == "confidence" and not 0.0 <= t <= 1.0:
        raise ValueError(f"exit_gate: threshold for criterion 'confidence' must be in [0, 1], got {t}")
    if criterion == "entropy" and not t >= 0.0:
        raise ValueError(f"exit_gate: threshold for criterion 'entropy' must be >= 0 (nats), got {t}")
    return t


def check_logits(logits: object) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"exit_gate: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"exit_gate: logits must have shape [N, C] (rank 2), got shape {tuple(logits.shape)}")
    if logits.dtype not in GATE_DTYPES:
        raise TypeError(f"exit_gate: logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"exit_gate: logits must have at least one class (C >= 1), got shape {tuple(logits.shape)}")


def check_gate_args(logits: object, threshold: object, criterion: object) -> float:
    """Validates exit_gate's arguments; returns the threshold as a float."""
    check_logits(logits)
    return check_threshold(threshold, check_criterion(criterion))


def check_compact_args(tensors: Sequence[torch.Tensor], index: torch.Tensor) -> None:
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("compact: tensors must be a list or tuple of tensors")
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"compact: index must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise TypeError(f"compact: index must be int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"compact: index must have rank 1, got shape {tuple(index.shape)}")
    for i, t in enumerate(tensors):
        if t.dim() < 1:
            raise ValueError(f"compact: tensors[{i}] must have rank >= 1 (rows on dim 0), got a scalar")
        if t.device != index.device:
            raise ValueError(f"compact: tensors[{i}] is on {t.device} but index is on {index.device}")


def check_append_args(buf, src, c0, pre=None, scale=None, shift=None) -> None:
    """append_channels' arguments (see :func:`eexit.reference.append_channels`)."""
    if not isinstance(buf, torch.Tensor) or not isinstance(src, torch.Tensor):
        raise TypeError("append_channels: buf and src must be torch.Tensors")
    if buf.dim() != 4:
        raise ValueError(f"append_channels: buf must have shape [N, C, H, W] (rank 4), got shape {tuple(buf.shape)}")
    if buf.dtype not in GATE_DTYPES:
        raise TypeError(f"append_channels: buf must be float32, float16 or bfloat16, got {buf.dtype}")
    if src.dim() != 4:
        raise ValueError(f"append_channels: src must have shape [N, C, H, W] (rank 4), got shape {tuple(src.shape)}")
    if src.dtype != buf.dtype:
        raise TypeError(f"append_channels: src must have buf's dtype {buf.dtype}, got {src.dtype}")
    if src.device != buf.device:
        raise ValueError(f"append_channels: src is on {src.device} but buf is on {buf.device}")
    if (src.shape[0], *src.shape[2:]) != (buf.shape[0], *buf.shape[2:]):
        raise ValueError(f"append_channels: src must have buf's batch and spatial sizes {tuple(buf.shape)}, "
                         f"got {tuple(src.shape)}")
    if isinstance(c0, bool) or not isinstance(c0, int):
        raise TypeError(f"append_channels: c0 must be an int, got {type(c0).__name__}")
    c = c0 + src.shape[1]
    if c0 < 0 or c > buf.shape[1]:
        raise ValueError(f"append_channels: the window [c0, c0 + C_src) = [{c0}, {c}) must lie within buf's "
                         f"{buf.shape[1]} channels")
    if torch._debug_has_internal_overlap(buf) == 1:
        raise ValueError("append_channels: buf must not have overlapping elements (e.g. an expanded tensor)")
    if torch._C._is_alias_of(src, buf):
        raise ValueError("append_channels: src must not share memory with buf")
    given = [t is not None for t in (pre, scale, shift)]
    if any(given) and not all(given):
        raise ValueError("append_channels: pre, scale and shift must be given together")
    if pre is None:
        return
    if not all(isinstance(t, torch.Tensor) for t in (pre, scale, shift)):
        raise TypeError("append_channels: pre, scale and shift must be torch.Tensors")
    if pre.dtype != buf.dtype:
        raise TypeError(f"append_channels: pre must have buf's dtype {buf.dtype}, got {pre.dtype}")
    if pre.device != buf.device:
        raise ValueError(f"append_channels: pre is on {pre.device} but buf is on {buf.device}")
    want = (buf.shape[0], c, *buf.shape[2:])
    if tuple(pre.shape) != want:
        raise ValueError(f"append_channels: pre must have shape [{', '.join(map(str, want))}] (c0 + C_src channels), "
                         f"got {tuple(pre.shape)}")
    if torch._debug_has_internal_overlap(pre) == 1:
        raise ValueError("append_channels: pre must not have overlapping elements (e.g. an expanded tensor)")
    if torch._C._is_alias_of(pre, buf) or torch._C._is_alias_of(pre, src):
        raise ValueError("append_channels: pre must not share memory with buf or src")
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dtype != torch.float32:
            raise TypeError(f"append_channels: {name} must be float32, got {t.dtype}")
        if tuple(t.shape) != (c,):
            raise ValueError(f"append_channels: {name} must have shape [{c}] (c0 + C_src), got {tuple(t.shape)}")
        if t.device != buf.device:
            raise ValueError(f"append_channels: {name} is on {t.device} but buf is on {buf.device}")


# ----------------------------------------------------------------------------- Triton conv kernels


def _check_int(fn: str, name: str, value: object, allowed=None, minimum=None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{fn}: {name} must be one of {allowed}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")


def _check_tensor(fn: str, name: str, t: object, x: Optional[torch.Tensor] = None,
                  dtype: Optional[torch.dtype] = None, shape=None) -> None:
    """Type, device (that of ``x``), dtype and exact shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x is not None and t.device != x.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must be {dtype}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_x(fn: str, x: object, interpret: bool) -> None:
    _check_tensor(fn, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{fn}: x must have shape [N, C, H, W] (rank 4), got {tuple(x.shape)}")
    if x.dtype not in GATE_DTYPES:
        raise TypeError(f"{fn}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{fn}: x must be channels_last (NHWC in memory); use x.to(memory_format=torch.channels_last)")
    if x.device.type != "cuda" and not (interpret and x.device.type == "cpu"):
        raise ValueError(f"{fn}: x must be a CUDA tensor (or a CPU one under TRITON_INTERPRET=1), got {x.device}")


def _check_weight(fn: str, name: str, w: object, x: torch.Tensor, ksize=(1, 3)) -> None:
    _check_tensor(fn, name, w, x, dtype=x.dtype)
    if w.dim() != 4 or w.shape[2] != w.shape[3] or w.shape[2] not in ksize:
        sizes = " or ".join(f"{k}x{k}" for k in ksize)
        raise ValueError(f"{fn}: {name} must have shape [C_out, C_in, k, k] with a {sizes} kernel, "
                         f"got {tuple(w.shape)}")
    if w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must have C_out >= 1 and C_in >= 1, got {tuple(w.shape)}")


def _check_affine(fn: str, names, pair, x: torch.Tensor, length: int) -> None:
    """A (scale, shift) pair of float32 vectors [length]."""
    for name, t in zip(names, pair):
        _check_tensor(fn, name, t, x, dtype=torch.float32, shape=(length,))


def _check_window(fn: str, name: str, start: object, width: int, total: int, what: str) -> None:
    _check_int(fn, name, start, minimum=0)
    if start + width > total:
        raise ValueError(f"{fn}: channel window [{name}, {name} + {width}) = [{start}, {start + width}) "
                         f"exceeds the {total} channels of {what}")


def _check_input(fn: str, x, c_in0, c_in: int, stride, in_scale, in_shift, n_active) -> None:
    """The input window, prologue, stride and n_active, common to both kernels."""
    _check_int(fn, "stride", stride, allowed=(1, 2))
    _check_window(fn, "c_in0", c_in0, c_in, x.shape[1], "x")
    if (in_scale is None) != (in_shift is None):
        raise ValueError(f"{fn}: in_scale and in_shift must be given together")
    if in_scale is not None:
        _check_affine(fn, ("in_scale", "in_shift"), (in_scale, in_shift), x, c_in)
    if n_active is not None:
        _check_tensor(fn, "n_active", n_active, x)
        if n_active.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{fn}: n_active must be int32 or int64, got {n_active.dtype}")
        if n_active.dim() > 1 or n_active.numel() != 1:
            raise ValueError(f"{fn}: n_active must be a scalar tensor (shape [] or [1]), got {tuple(n_active.shape)}")


def _out_size(fn: str, size: int, k: int, stride: int, padding: int) -> int:
    out = (size + 2 * padding - k) // stride + 1
    if out < 1:
        raise ValueError(f"{fn}: input of spatial size {size} is too small for a {k}x{k} kernel with padding {padding}")
    return out


def _check_out(fn: str, out, c_out0, x: torch.Tensor, c_out: int, h_out: int, w_out: int) -> None:
    """The caller's out buffer and its window at c_out0; with out None, c_out0 must be 0."""
    _check_int(fn, "c_out0", c_out0, minimum=0)
    if out is None:
        if c_out0 != 0:
            raise ValueError(f"{fn}: c_out0 must be 0 when out is None, got {c_out0}")
        return
    n = x.shape[0]
    _check_tensor(fn, "out", out, x, dtype=x.dtype)
    if out.dim() != 4 or out.shape[0] != n or tuple(out.shape[2:]) != (h_out, w_out):
        raise ValueError(f"{fn}: out must have shape [{n}, C_total_out, {h_out}, {w_out}], got {tuple(out.shape)}")
    if not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{fn}: out must be channels_last (NHWC in memory)")
    _check_window(fn, "c_out0", c_out0, c_out, out.shape[1], "out")


def _element_range(t: torch.Tensor) -> Tuple[int, int]:
    """The elements of t's storage that t spans, [lo, hi)."""
    lo = t.storage_offset()
    return lo, lo + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1


def _check_alias(fn: str, x, c_in0, c_in, out, c_out0, c_out) -> None:
    """Where out's memory overlaps x's, out must be x itself with disjoint channel windows. Skipped
    while Dynamo traces a wrapper (storage identity is not traceable): the fake impl checks it."""
    if torch.compiler.is_dynamo_compiling() or not torch._C._is_alias_of(out, x):
        return
    (x_lo, x_hi), (o_lo, o_hi) = _element_range(x), _element_range(out)
    if o_hi <= x_lo or x_hi <= o_lo:
        return
    same_buffer = (out.storage_offset(), out.shape, out.stride()) == (x.storage_offset(), x.shape, x.stride())
    if not same_buffer or (c_out0 < c_in0 + c_in and c_in0 < c_out0 + c_out):
        raise ValueError(f"{fn}: out shares memory with x; it must then be the same tensor with a channel "
                         f"window [c_out0, c_out0 + C_out) disjoint from [c_in0, c_in0 + C_in)")


def check_conv_args(x, weight, scale, shift, out, *, stride, padding, c_in0, c_out0, in_scale, in_shift,
                    n_active, interpret: bool) -> Tuple[int, int, int, int]:
    """conv2d_nhwc's arguments (see :func:`eexit.kernels.conv2d_nhwc`; ``out`` may be None); returns
    the shape ``(N, C_out, H_out, W_out)`` of the output window. ``interpret``: Triton runs under
    TRITON_INTERPRET=1, so CPU tensors are accepted too."""
    fn = "conv2d_nhwc"
    _check_x(fn, x, interpret)
    _check_weight(fn, "weight", weight, x)
    c_out, c_in, k, _ = weight.shape
    _check_affine(fn, ("scale", "shift"), (scale, shift), x, c_out)
    _check_int(fn, "padding", padding, minimum=0)
    _check_input(fn, x, c_in0, c_in, stride, in_scale, in_shift, n_active)
    h_out = _out_size(fn, x.shape[2], k, stride, padding)
    w_out = _out_size(fn, x.shape[3], k, stride, padding)
    _check_out(fn, out, c_out0, x, c_out, h_out, w_out)
    if out is not None:
        _check_alias(fn, x, c_in0, c_in, out, c_out0, c_out)
    return x.shape[0], c_out, h_out, w_out


def check_bottleneck_args(x, w1, scale1, shift1, w2, scale2, shift2, out, *, stride, c_in0, c_out0, in_scale,
                          in_shift, n_active, interpret: bool) -> Tuple[int, int, int, int]:
    """bottleneck_nhwc's arguments (see :func:`eexit.kernels.bottleneck_nhwc`), as
    :func:`check_conv_args`; out may be x whatever the windows."""
    fn = "bottleneck_nhwc"
    _check_x(fn, x, interpret)
    _check_weight(fn, "w1", w1, x, ksize=(1,))
    _check_weight(fn, "w2", w2, x, ksize=(3,))
    inner, c_in = w1.shape[0], w1.shape[1]
    c_out = w2.shape[0]
    if w2.shape[1] != inner:
        raise ValueError(f"{fn}: w2 must have C_in = {inner} (w1's C_out), got {tuple(w2.shape)}")
    _check_affine(fn, ("scale1", "shift1"), (scale1, shift1), x, inner)
    _check_affine(fn, ("scale2", "shift2"), (scale2, shift2), x, c_out)
    _check_input(fn, x, c_in0, c_in, stride, in_scale, in_shift, n_active)
    h_out = _out_size(fn, x.shape[2], 3, stride, 1)
    w_out = _out_size(fn, x.shape[3], 3, stride, 1)
    _check_out(fn, out, c_out0, x, c_out, h_out, w_out)
    return x.shape[0], c_out, h_out, w_out
