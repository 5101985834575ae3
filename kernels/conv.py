"""Implicit-GEMM convolution kernels for dense-concatenate conv blocks (Triton).

All tensors are 4-D ``[N, C, H, W]`` in ``torch.channels_last`` memory format (NHWC in
memory), fp32, fp16 or bf16; products accumulate in fp32. One kernel covers the family:

* GEMM view: M = N * H_out * W_out output pixels, N_gemm = C_out, K = k * k * C_in, walked
  as one flattened loop over (tap, channel chunk).
* Channel windows: the conv reads channels ``[c_in0, c_in0 + C_in)`` of ``x`` and writes
  channels ``[c_out0, c_out0 + C_out)`` of ``out``; nothing else of ``out`` is touched, so a
  dense block can read its feature buffer and append the new features to the same buffer.
* Epilogue: ``y = relu?(conv(x) * scale + shift)`` per output channel (BatchNorm folded,
  bias in ``shift``), cast to the output dtype.
* Prologue (optional): ``relu(x * in_scale + in_shift)`` per input channel on every loaded
  element; zero padding is applied after it, so padded taps contribute exactly 0.
* ``n_active`` (optional device scalar): output rows (samples) ``>= n_active`` are neither
  read nor written, and programs holding only such rows return at once. No host sync.

The bottleneck pair (1x1 conv -> BN/ReLU -> 3x3 conv -> BN/ReLU) runs as two launches of
the same kernel through a scratch buffer ``[N, inner, H, W]`` (channels_last, dtype of x).
A single fused kernel would need each 3x3 output tile's 1x1 activations over a halo of
neighbouring pixels; Triton has no addressable shared memory to gather shifted halo rows
from, so fusing means recomputing the 1x1 GEMM for each of the 9 taps (9x the larger of
the two GEMMs). The scratch round trip costs N * inner * H * W elements written and read
once (L2-resident for typical DenseNet widths), far less than that recompute.

Block sizes come from ``triton.autotune`` over a small config list on GPU (3x3 convs keep
``num_warps <= 4``: Triton has miscompiled flattened conv loops at 8 warps) and from one
small fixed config when ``TRITON_INTERPRET=1`` (read at import, as ``triton.jit`` does).
fp32 inputs use TF32 products when ``torch.backends.cudnn.allow_tf32`` is set (as
``F.conv2d`` does) and IEEE fp32 products otherwise.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if _INTERPRET:
    # Numpy interpreter: every program instance costs ~1 ms, keep tiles small but > 1 per dim.
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 8, "BLOCK_K": 8}, num_warps=1)]
else:
    _CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 32, 8, 3),
            (128, 64, 32, 4, 3),
            (64, 128, 32, 4, 3),
            (64, 64, 32, 4, 4),
            (128, 32, 32, 4, 4),
            (64, 32, 64, 4, 3),
            (32, 32, 64, 2, 4),
        ]
    ]


def _prune_configs(configs, named_args, **kwargs):
    """Drops 8-warp configs for 3x3 and tiles far wider than C_out / C_in."""
    c_out, c_in = named_args["C_out"], named_args["C_in"]
    max_n = max(32, triton.next_power_of_2(c_out))
    max_k = max(32, triton.next_power_of_2(c_in))
    kept = [
        c for c in configs
        if (kwargs["KSIZE"] == 1 or c.num_warps <= 4)
        and c.kwargs["BLOCK_N"] <= max_n and c.kwargs["BLOCK_K"] <= max_k
    ]
    return kept or [min(configs, key=lambda c: (c.num_warps, c.kwargs["BLOCK_N"]))]


@triton.autotune(
    configs=_CONFIGS,
    key=["N", "H", "W", "C_in", "C_out", "KSIZE", "STRIDE"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _conv_nhwc_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, in_scale_ptr, in_shift_ptr, out_ptr, n_active_ptr,
    N, H, W, C_in, H_out, W_out, C_out, c_in0, c_out0,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    son, soc, soh, sow,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    RELU: tl.constexpr, PROLOGUE: tl.constexpr, HAS_N_ACTIVE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    hw_out = H_out * W_out
    if HAS_N_ACTIVE:
        n_rows = tl.minimum(tl.maximum(tl.load(n_active_ptr).to(tl.int32), 0), N)
    else:
        n_rows = N
    m_total = n_rows * hw_out
    if pid_m * BLOCK_M >= m_total:
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < m_total
    n_mask = offs_n < C_out
    img = offs_m // hw_out
    pix = offs_m % hw_out
    oh = pix // W_out
    ow = pix % W_out
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    x_img = x_ptr + img.to(tl.int64) * sxn + c_in0 * sxc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_chunks = tl.cdiv(C_in, BLOCK_K)
    for it in range(KSIZE * KSIZE * k_chunks):
        tap = it // k_chunks
        ck = (it - tap * k_chunks) * BLOCK_K + offs_k
        kh = tap // KSIZE
        kw = tap - kh * KSIZE
        ih = ih0 + kh
        iw = iw0 + kw
        valid = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        k_mask = ck < C_in
        a_mask = valid[:, None] & k_mask[None, :]
        a_ptrs = x_img[:, None] + (ih * sxh + iw * sxw)[:, None] + ck[None, :] * sxc
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        if PROLOGUE:
            s_in = tl.load(in_scale_ptr + ck, mask=k_mask, other=0.0)
            b_in = tl.load(in_shift_ptr + ck, mask=k_mask, other=0.0)
            a_act = tl.maximum(a.to(tl.float32) * s_in[None, :] + b_in[None, :], 0.0)
            a = tl.where(a_mask, a_act, 0.0).to(x_ptr.dtype.element_ty)
        b_ptrs = w_ptr + kh * swh + kw * sww + ck[:, None] * swi + offs_n[None, :] * swo
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    shift = tl.load(shift_ptr + offs_n, mask=n_mask, other=0.0)
    y = acc * scale[None, :] + shift[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    o_rows = out_ptr + img.to(tl.int64) * son + oh * soh + ow * sow + c_out0 * soc
    o_ptrs = o_rows[:, None] + offs_n[None, :] * soc
    tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ----------------------------------------------------------------------------- checks


def _check_int(fn: str, name: str, value: object, allowed=None, minimum=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{fn}: {name} must be one of {allowed}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return value


def _check_tensor(fn: str, name: str, t: object, like: Optional[torch.Tensor] = None,
                  dtype: Optional[torch.dtype] = None, shape=None) -> torch.Tensor:
    """Type, device (that of ``like``), dtype and exact shape checks."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but x is on {like.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must be {dtype}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def _check_x(fn: str, x: object) -> torch.Tensor:
    _check_tensor(fn, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{fn}: x must have shape [N, C, H, W] (rank 4), got {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{fn}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{fn}: x must be channels_last (NHWC in memory); use x.to(memory_format=torch.channels_last)")
    if x.device.type != "cuda" and not _INTERPRET:
        raise ValueError(f"{fn}: x must be a CUDA tensor (or run under TRITON_INTERPRET=1), got {x.device}")
    return x


def _check_weight(fn: str, name: str, w: object, x: torch.Tensor, ksize=(1, 3)) -> torch.Tensor:
    _check_tensor(fn, name, w, like=x, dtype=x.dtype)
    if w.dim() != 4 or w.shape[2] != w.shape[3] or w.shape[2] not in ksize:
        sizes = " or ".join(f"{k}x{k}" for k in ksize)
        raise ValueError(f"{fn}: {name} must have shape [C_out, C_in, k, k] with a {sizes} kernel, "
                         f"got {tuple(w.shape)}")
    if w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must have C_out >= 1 and C_in >= 1, got {tuple(w.shape)}")
    return w


def _check_affine(fn: str, names, pair, x: torch.Tensor, length: int):
    """Checks a (scale, shift) pair of float32 vectors of the given length; returns them contiguous."""
    return tuple(
        _check_tensor(fn, name, t, like=x, dtype=torch.float32, shape=(length,)).contiguous()
        for name, t in zip(names, pair)
    )


def _check_prologue(fn: str, in_scale, in_shift, x: torch.Tensor, c_in: int):
    if (in_scale is None) != (in_shift is None):
        raise ValueError(f"{fn}: in_scale and in_shift must be given together")
    if in_scale is None:
        return None
    return _check_affine(fn, ("in_scale", "in_shift"), (in_scale, in_shift), x, c_in)


def _check_window(fn: str, name: str, start: object, width: int, total: int, what: str) -> int:
    _check_int(fn, name, start, minimum=0)
    if start + width > total:
        raise ValueError(f"{fn}: channel window [{name}, {name} + {width}) = [{start}, {start + width}) "
                         f"exceeds the {total} channels of {what}")
    return start


def _check_n_active(fn: str, n_active: object, x: torch.Tensor) -> Optional[torch.Tensor]:
    if n_active is None:
        return None
    _check_tensor(fn, "n_active", n_active, like=x)
    if n_active.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: n_active must be int32 or int64, got {n_active.dtype}")
    if n_active.dim() > 1 or n_active.numel() != 1:
        raise ValueError(f"{fn}: n_active must be a scalar tensor (shape [] or [1]), got {tuple(n_active.shape)}")
    return n_active


def _out_size(fn: str, size: int, k: int, stride: int, padding: int) -> int:
    out = (size + 2 * padding - k) // stride + 1
    if out < 1:
        raise ValueError(f"{fn}: input of spatial size {size} is too small for a {k}x{k} kernel with padding {padding}")
    return out


def _prepare_out(fn: str, out, c_out0, x: torch.Tensor, c_out: int, h_out: int, w_out: int):
    """Allocates out (then c_out0 must be 0) or checks the caller's buffer; returns (out, c_out0)."""
    n = x.shape[0]
    _check_int(fn, "c_out0", c_out0, minimum=0)
    if out is None:
        if c_out0 != 0:
            raise ValueError(f"{fn}: c_out0 must be 0 when out is None, got {c_out0}")
        out = torch.empty((n, c_out, h_out, w_out), device=x.device, dtype=x.dtype,
                          memory_format=torch.channels_last)
        return out, 0
    _check_tensor(fn, "out", out, like=x, dtype=x.dtype)
    if out.dim() != 4 or out.shape[0] != n or tuple(out.shape[2:]) != (h_out, w_out):
        raise ValueError(f"{fn}: out must have shape [{n}, C_total_out, {h_out}, {w_out}], got {tuple(out.shape)}")
    if not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{fn}: out must be channels_last (NHWC in memory)")
    return out, _check_window(fn, "c_out0", c_out0, c_out, out.shape[1], "out")


def _byte_range(t: torch.Tensor):
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + span * t.element_size()


def _check_alias(fn: str, x, c_in0, c_in, out, c_out0, c_out) -> None:
    """Where out's memory overlaps x's, out must be x itself with disjoint channel windows."""
    (x_lo, x_hi), (o_lo, o_hi) = _byte_range(x), _byte_range(out)
    if o_hi <= x_lo or x_hi <= o_lo:
        return
    same_buffer = out.data_ptr() == x.data_ptr() and out.shape == x.shape and out.stride() == x.stride()
    if not same_buffer or (c_out0 < c_in0 + c_in and c_in0 < c_out0 + c_out):
        raise ValueError(f"{fn}: out shares memory with x; it must then be the same tensor with a channel "
                         f"window [c_out0, c_out0 + C_out) disjoint from [c_in0, c_in0 + C_in)")


# ----------------------------------------------------------------------------- launch


def _launch(x, weight, scale, shift, out, *, stride, padding, relu, c_in0, c_out0, prologue, n_active):
    """Launches the kernel on checked arguments; skips empty batches."""
    n, _, h, w = x.shape
    c_out, c_in, k, _ = weight.shape
    h_out, w_out = out.shape[2], out.shape[3]
    if n == 0:
        return out
    in_scale, in_shift = prologue if prologue is not None else (scale, shift)  # unused when no prologue
    tf32 = x.dtype != torch.float32 or torch.backends.cudnn.allow_tf32
    grid = lambda meta: (triton.cdiv(n * h_out * w_out, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]))
    _conv_nhwc_kernel[grid](
        x, weight, scale, shift, in_scale, in_shift, out, n_active if n_active is not None else scale,
        n, h, w, c_in, h_out, w_out, c_out, c_in0, c_out0,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        KSIZE=k, STRIDE=stride, PAD=padding, RELU=bool(relu), PROLOGUE=prologue is not None,
        HAS_N_ACTIVE=n_active is not None, DOT_PRECISION="tf32" if tf32 else "ieee",
    )
    return out


def conv2d_nhwc(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    stride: int = 1,
    padding: int = 0,
    relu: bool = True,
    out: Optional[torch.Tensor] = None,
    c_in0: int = 0,
    c_out0: int = 0,
    in_scale: Optional[torch.Tensor] = None,
    in_shift: Optional[torch.Tensor] = None,
    n_active: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``out[:, c_out0:c_out0+C_out] = relu?(conv(pre(x[:, c_in0:c_in0+C_in]), weight) * scale + shift)``.

    Args:
        x: ``[N, C_total_in, H, W]`` channels_last, float32/float16/bfloat16 (CUDA, or CPU
            under ``TRITON_INTERPRET=1``).
        weight: ``[C_out, C_in, k, k]``, k in {1, 3}, dtype of x, any strides (a layout with
            C_out fastest, e.g. ``w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)``,
            loads fastest).
        scale, shift: float32 ``[C_out]``: folded BatchNorm (and conv bias) of the output.
        stride: 1 or 2. padding: int >= 0 (zeros). relu: ReLU after scale/shift.
        out: ``[N, C_total_out, H_out, W_out]`` channels_last, dtype of x; allocated with
            exactly C_out channels when None (then c_out0 must be 0). It may be x itself
            when the two channel windows are disjoint.
        c_in0, c_out0: first channel of the input / output window.
        in_scale, in_shift: float32 ``[C_in]``; when given, each input element becomes
            ``relu(x * in_scale + in_shift)`` before the conv (padding stays 0).
        n_active: int32/int64 device scalar (shape [] or [1]); rows ``>= n_active`` of out
            are left untouched.

    Returns:
        out, with ``H_out = (H + 2 * padding - k) // stride + 1`` (same for W).
    """
    fn = "conv2d_nhwc"
    _check_x(fn, x)
    _check_weight(fn, "weight", weight, x)
    c_out, c_in, k, _ = weight.shape
    scale, shift = _check_affine(fn, ("scale", "shift"), (scale, shift), x, c_out)
    _check_int(fn, "stride", stride, allowed=(1, 2))
    _check_int(fn, "padding", padding, minimum=0)
    _check_window(fn, "c_in0", c_in0, c_in, x.shape[1], "x")
    prologue = _check_prologue(fn, in_scale, in_shift, x, c_in)
    n_active = _check_n_active(fn, n_active, x)
    h_out = _out_size(fn, x.shape[2], k, stride, padding)
    w_out = _out_size(fn, x.shape[3], k, stride, padding)
    out, c_out0 = _prepare_out(fn, out, c_out0, x, c_out, h_out, w_out)
    _check_alias(fn, x, c_in0, c_in, out, c_out0, c_out)
    return _launch(x, weight, scale, shift, out, stride=stride, padding=padding, relu=relu,
                   c_in0=c_in0, c_out0=c_out0, prologue=prologue, n_active=n_active)


def bottleneck_nhwc(
    x: torch.Tensor,
    w1: torch.Tensor,
    scale1: torch.Tensor,
    shift1: torch.Tensor,
    w2: torch.Tensor,
    scale2: torch.Tensor,
    shift2: torch.Tensor,
    *,
    stride: int = 1,
    relu1: bool = True,
    relu2: bool = True,
    out: Optional[torch.Tensor] = None,
    c_in0: int = 0,
    c_out0: int = 0,
    in_scale: Optional[torch.Tensor] = None,
    in_shift: Optional[torch.Tensor] = None,
    n_active: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """1x1 conv -> scale1/shift1/ReLU -> 3x3 conv (padding 1, ``stride``) -> scale2/shift2/ReLU.

    Two launches through a scratch ``[N, inner, H, W]`` buffer (see the module docstring).

    Args:
        x: ``[N, C_total_in, H, W]`` channels_last, float32/float16/bfloat16; reads channels
            ``[c_in0, c_in0 + C_in)``, optionally pre-activated by in_scale/in_shift
            (float32 ``[C_in]``) as in :func:`conv2d_nhwc`.
        w1: ``[inner, C_in, 1, 1]``; scale1, shift1: float32 ``[inner]``; relu1: ReLU after them.
        w2: ``[C_out, inner, 3, 3]``; scale2, shift2: float32 ``[C_out]``; relu2: ReLU after them.
        stride: 1 or 2, applied by the 3x3 conv.
        out, c_out0, n_active: as in :func:`conv2d_nhwc` (``H_out = (H - 1) // stride + 1``).
            out may be x itself, whatever the windows: x is fully read before out is written.

    Returns:
        out.
    """
    fn = "bottleneck_nhwc"
    _check_x(fn, x)
    _check_weight(fn, "w1", w1, x, ksize=(1,))
    _check_weight(fn, "w2", w2, x, ksize=(3,))
    inner, c_in = w1.shape[0], w1.shape[1]
    c_out = w2.shape[0]
    if w2.shape[1] != inner:
        raise ValueError(f"{fn}: w2 must have C_in = {inner} (w1's C_out), got {tuple(w2.shape)}")
    scale1, shift1 = _check_affine(fn, ("scale1", "shift1"), (scale1, shift1), x, inner)
    scale2, shift2 = _check_affine(fn, ("scale2", "shift2"), (scale2, shift2), x, c_out)
    _check_int(fn, "stride", stride, allowed=(1, 2))
    _check_window(fn, "c_in0", c_in0, c_in, x.shape[1], "x")
    prologue = _check_prologue(fn, in_scale, in_shift, x, c_in)
    n_active = _check_n_active(fn, n_active, x)
    n, _, h, w = x.shape
    h_out = _out_size(fn, h, 3, stride, 1)
    w_out = _out_size(fn, w, 3, stride, 1)
    out, c_out0 = _prepare_out(fn, out, c_out0, x, c_out, h_out, w_out)
    mid = torch.empty((n, inner, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    _launch(x, w1, scale1, shift1, mid, stride=1, padding=0, relu=relu1,
            c_in0=c_in0, c_out0=0, prologue=prologue, n_active=n_active)
    return _launch(mid, w2, scale2, shift2, out, stride=stride, padding=1, relu=relu2,
                   c_in0=0, c_out0=c_out0, prologue=None, n_active=n_active)
