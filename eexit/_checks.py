"""Argument checks shared by the reference ops and the fake (meta) implementations.

They mirror csrc/checks.cpp so that every backend rejects the same inputs with
the same exception type (ValueError / TypeError / IndexError); compact's rule that every
tensor has the same rows is checked here only (in eexit.ops.compact, the reference and the
fake implementation: the C++ op itself takes any row counts). The Triton conv kernels'
suite (:func:`check_conv_args`, :func:`check_bottleneck_args`) runs in their Python
wrappers, their op bodies and their fake implementations alike. :func:`check_model_input`
checks the input of an early-exit model's forward and infer.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch

CRITERIA = ("confidence", "entropy")
# the float dtypes the kernels take (gate, append_channels, direct_conv2d, the Triton convs)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    if logits.dtype not in FLOAT_DTYPES:
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
        if t.shape[0] != tensors[0].shape[0]:  # Python-side only: the C++ op itself takes any row counts
            raise ValueError(f"compact: tensors[{i}] has {t.shape[0]} rows but tensors[0] has {tensors[0].shape[0]}; "
                             f"the tensors must be rows of the same batch (dim 0)")


def check_append_args(buf, src, c0, pre=None, scale=None, shift=None) -> None:
    """append_channels' arguments (see :func:`eexit.reference.append_channels`)."""
    if not isinstance(buf, torch.Tensor) or not isinstance(src, torch.Tensor):
        raise TypeError("append_channels: buf and src must be torch.Tensors")
    if buf.dim() != 4:
        raise ValueError(f"append_channels: buf must have shape [N, C, H, W] (rank 4), got shape {tuple(buf.shape)}")
    if buf.dtype not in FLOAT_DTYPES:
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


POOL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _as_pair(op: str, name: str, value: object) -> Tuple[int, int]:
    if type(value) is int:  # the common cases, checked cheaply (ops run this on every call)
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
    pair = (value, value) if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or any(isinstance(v, bool) or not isinstance(v, (int, torch.SymInt))
                                                  for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if len(pair) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {list(pair)}")
    return pair[0], pair[1]


def pool_pairs(kernel_size: object, stride: object, padding: object, ceil_mode: object):
    """max_pool2d's kernel_size, stride (None: kernel_size) and padding as (h, w) pairs, each given as
    an int or a pair of ints (TypeError / ValueError otherwise), after checking that ceil_mode is a bool."""
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"max_pool2d: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    k = _as_pair("max_pool2d", "kernel_size", kernel_size)
    s = k if stride is None else _as_pair("max_pool2d", "stride", stride)
    return k, s, _as_pair("max_pool2d", "padding", padding)


def _pool_out_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
        out -= 1
    return out


def _check_image(op: str, x: object, dtypes: Sequence[torch.dtype], channels: str) -> Tuple[int, int, int]:
    """x of an image op: a tensor [N, C, H, W] or [C, H, W] of one of ``dtypes`` with C, H, W >= 1
    (``channels``: what the op calls C); returns (C, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{op}: x must have shape [N, {channels}, H, W] or [{channels}, H, W] (rank 4 or 3), "
                         f"got shape {list(x.shape)}")
    if x.dtype not in dtypes:
        names = [str(d).replace("torch.", "") for d in dtypes]
        raise TypeError(f"{op}: x must be {', '.join(names[:-1])} or {names[-1]}, got {x.dtype}")
    c, h, w = x.shape[-3:]
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{op}: x must have {channels}, H and W >= 1, got shape {list(x.shape)}")
    return c, h, w


def check_lrn_args(x, size, alpha, beta, k) -> None:
    """local_response_norm's tensor and values (see :func:`eexit.ops.local_response_norm`) as
    csrc/checks.cpp checks them, and :func:`check_lrn_values`."""
    if isinstance(x, torch.Tensor) and x.dim() != 4:  # F.local_response_norm reads 3-D input as [N, C, L]
        raise ValueError(f"local_response_norm: x must have shape [N, C, H, W] (rank 4), got shape {list(x.shape)}")
    _check_image("local_response_norm", x, FLOAT_DTYPES, "C")
    check_lrn_values(size, alpha, beta, k)


def check_lrn_values(size, alpha, beta, k) -> None:
    """local_response_norm's size (an int >= 1, as csrc/checks.cpp checks it) and alpha, beta, k
    (real numbers: the op's schema would refuse others less clearly)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm: size must be an int >= 1, got {size!r}")
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"local_response_norm: {name} must be a real number, got {type(v).__name__}")


def check_max_pool_args(x, kernel_size, stride, padding, ceil_mode) -> Tuple[int, int]:
    """max_pool2d's tensor and values (pairs from :func:`pool_pairs`; see :func:`eexit.ops.max_pool2d`) as
    csrc/checks.cpp checks them; returns the output's (H_out, W_out)."""
    h, w = _check_image("max_pool2d", x, POOL_DTYPES, "C")[1:]
    k, s, p = (list(_as_pair("max_pool2d", n, v)) for n, v in (("kernel_size", kernel_size), ("stride", stride),
                                                            ("padding", padding)))
    if min(k) < 1:
        raise ValueError(f"max_pool2d: kernel_size must be >= 1, got {k}")
    if min(s) < 1:
        raise ValueError(f"max_pool2d: stride must be >= 1, got {s}")
    if min(p) < 0 or 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ValueError(f"max_pool2d: padding must be >= 0 and at most half of kernel_size {k}, got {p}")
    if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
        raise ValueError(f"max_pool2d: x's height and width [{h}, {w}] plus twice padding {p} must be at least "
                         f"kernel_size {k}")
    return (_pool_out_size(h, k[0], s[0], p[0], ceil_mode), _pool_out_size(w, k[1], s[1], p[1], ceil_mode))


# ----------------------------------------------------------------------------- direct_conv2d

def conv_padding(padding: object) -> Tuple[int, int]:
    """direct_conv2d's padding, an int or an (h, w) pair of ints, as a pair."""
    return _as_pair("direct_conv2d", "padding", padding)


def check_direct_conv_args(x, weight, bias, padding) -> Tuple[int, int]:
    """direct_conv2d's tensors and padding (a pair from :func:`conv_padding`; see
    :func:`eexit.ops.direct_conv2d`) as csrc/checks.cpp checks them; returns (H_out, W_out)."""
    for name, t in (("weight", weight),) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"direct_conv2d: {name} must be a torch.Tensor, got {type(t).__name__}")
    c_in, h, w = _check_image("direct_conv2d", x, FLOAT_DTYPES, "C_in")
    if weight.dim() != 4:
        raise ValueError(f"direct_conv2d: weight must have shape [C_out, C_in, KH, KW] (rank 4), "
                         f"got shape {list(weight.shape)}")
    c_out, wc, kh, kw = weight.shape
    if c_out < 1 or wc != c_in or kh < 1 or kw < 1:
        raise ValueError(f"direct_conv2d: weight must have shape [C_out, {c_in}, KH, KW] with C_out, KH, KW >= 1 "
                         f"(x has {c_in} channels), got shape {list(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"direct_conv2d: weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"direct_conv2d: weight must be on x's device {x.device}, got {weight.device}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != c_out:
            raise ValueError(f"direct_conv2d: bias must have shape [{c_out}] (C_out), got shape {list(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"direct_conv2d: bias must have x's dtype {x.dtype}, got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"direct_conv2d: bias must be on x's device {x.device}, got {bias.device}")
    ph, pw = padding
    if ph < 0 or pw < 0:
        raise ValueError(f"direct_conv2d: padding must be a pair of ints >= 0, got {list(padding)}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"direct_conv2d: x's height and width [{h}, {w}] plus twice padding {list(padding)} must be "
                         f"at least the kernel [{kh}, {kw}]")
    return h + 2 * ph - kh + 1, w + 2 * pw - kw + 1


# ----------------------------------------------------------------------------- model inputs

PARAMETERS = "parameters"  # an input dtype: that of the model's parameters


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _dims(dims: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("*" if d is None else str(d) for d in dims) + "]"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _autocast(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know (meta)
        return False


def check_input_spec(shape: object, dtype: object) -> None:
    """A model's declared input (see :meth:`eexit.nn.EarlyExitModel.check_input`): shape per sample, a
    tuple of ints >= 1 or None (any size), or None; dtype None, "parameters" or a torch.dtype."""
    if shape is not None and (not isinstance(shape, (tuple, list)) or any(
            d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1) for d in shape)):
        raise ValueError(f"input_shape must be a tuple of sizes per sample (ints >= 1, or None for any size), "
                         f"e.g. (3, None, None), or None; got {shape!r}")
    if dtype is not None and dtype != PARAMETERS and not isinstance(dtype, torch.dtype):
        raise ValueError(f"input_dtype must be None, {PARAMETERS!r} or a torch.dtype, got {dtype!r}")


def check_model_input(x: object, what: str, shape: Optional[Sequence[Optional[int]]] = None,
                      dtype: object = None, param: Optional[torch.Tensor] = None) -> None:
    """The input of an early-exit model's forward / infer, before anything runs; ``what`` names the
    model in messages ("this MSDNet (CIFAR)"). Only Python-level metadata is read (no tensor op, no sync).

    shape: per sample (without the batch dimension), an int where the size is fixed, None where any
    size goes; or None when unknown: then x may also be a non-empty list/tuple of tensors (multi-scale
    input), every one a batch of the same samples on dim 0.
    dtype: a torch.dtype x must have; "parameters": the dtype of ``param``; None: floating x must have
    param's dtype, other dtypes pass (e.g. token ids). param: a parameter of the model's first stage
    (its device is x's; None: a model without parameters).
    TypeError for a non-tensor x or a wrong dtype, ValueError for a wrong shape or device.
    """
    if isinstance(x, torch.Tensor):
        named: Sequence[Tuple[str, torch.Tensor]] = (("x", x),)
    elif shape is None and isinstance(x, (list, tuple)) and x:
        named = tuple((f"x[{i}]", t) for i, t in enumerate(x))
        for name, t in named:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor for {what}, got {_type_name(t)}")
    else:
        want = dtype if isinstance(dtype, torch.dtype) else None
        if want is None and param is not None and param.is_floating_point():
            want = param.dtype
        kind = "a torch.Tensor " + _dims(("B", *shape)) if shape is not None else \
            "a torch.Tensor or a non-empty list/tuple of tensors"
        msg = f"x must be {kind} for {what}, got {_type_name(x)}"
        if type(x).__module__ == "numpy":
            msg += "; convert it with torch.as_tensor(x" + ("" if want is None else f", dtype={want}") + ")"
        raise TypeError(msg)
    if shape is not None:
        want_dims = ("B", *shape)
        if x.dim() != len(want_dims) or any(w is not None and w != s for w, s in zip(shape, x.shape[1:])):
            msg = f"x must be {_dims(want_dims)} for {what}, got {_dims(x.shape)}"
            if x.dim() == len(shape) and all(w is None or w == s for w, s in zip(shape, x.shape)):
                msg += "; one sample? add the batch dimension: x.unsqueeze(0)"
            elif (x.dim() == len(want_dims) >= 3 and shape[0] is not None and x.shape[-1] == shape[0]
                  and x.shape[1] != shape[0]):
                order = ", ".join(map(str, (0, x.dim() - 1, *range(1, x.dim() - 1))))
                msg += f"; channels last? they go on dim 1: x.permute({order})"
            raise ValueError(msg)
    else:
        for name, t in named:
            if t.dim() == 0:
                raise ValueError(f"{name} must be a batch (samples on dim 0) for {what}, got a scalar")
            if t.shape[0] != named[0][1].shape[0]:
                raise ValueError(f"{name} has {t.shape[0]} samples (dim 0) but x[0] has {named[0][1].shape[0]}: "
                                 f"the tensors of x must be batches of the same samples, for {what}")
    for name, t in named:
        if isinstance(dtype, torch.dtype):
            if t.dtype != dtype:
                raise TypeError(f"{name} must be {_dtype_name(dtype)} for {what}, got {_dtype_name(t.dtype)}")
        elif (param is not None and t.dtype != param.dtype and param.is_floating_point()
              and (t.is_floating_point() or dtype == PARAMETERS) and not _autocast(t.device)):
            raise TypeError(f"{name} must be {_dtype_name(param.dtype)} like the parameters of {what}, got "
                            f"{_dtype_name(t.dtype)}; convert it with {name}.to({param.dtype})")
        if param is not None and t.device != param.device:
            raise ValueError(f"{name} is on {t.device} but the parameters of {what} are on {param.device}; "
                             f"move it with {name}.to({str(param.device)!r})")


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


def _is_nhwc(t: torch.Tensor) -> bool:
    """Channels-last in memory. Besides torch's own flag, the exact NHWC strides are accepted:
    under torch.compile with dynamic shapes, torch 2.11 reports a channels_last buffer made in the
    graph (sizes symbolic) as not channels_last, while its strides are exactly these (seen on a GPU
    image with torch 2.11; 2.14 answers True)."""
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    _, c, h, w = t.shape
    return tuple(t.stride()) == (h * w * c, 1, w * c, c)


def _check_x(fn: str, x: object, interpret: bool) -> None:
    _check_tensor(fn, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{fn}: x must have shape [N, C, H, W] (rank 4), got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if not _is_nhwc(x):
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
    if not _is_nhwc(out):
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
