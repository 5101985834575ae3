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

Both run as ``torch.library`` ops, ``torch.ops.eexit.conv2d_nhwc`` and
``torch.ops.eexit.bottleneck_nhwc``: they write into a required ``out`` (a mutated argument)
and return nothing; :func:`conv2d_nhwc` and :func:`bottleneck_nhwc` allocate ``out`` when none
is given and return it. They are ``torch.library.custom_op`` ops: opaque to ``torch.compile``,
which runs them in ``fullgraph`` graphs through their fake implementations. (``triton_op`` would
let Inductor see the kernel, but it runs the op body on fake tensors while tracing, which the
Triton interpreter cannot do.) The wrappers, the op bodies and the fake implementations share
one argument check (``eexit._checks``). Launches go to x's device, on its current stream.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from eexit._checks import check_bottleneck_args, check_conv_args

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

def _configs(tiles):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in tiles]


if _INTERPRET:
    # Numpy interpreter: every program instance costs ~1 ms, keep tiles small but > 1 per dim.
    _ALIGNED_CONFIGS = _UNALIGNED_CONFIGS = _IEEE_CONFIGS = _configs([(32, 8, 8, 1, 1)])
else:
    # For windows whose rows start 16-byte aligned (vectorised loads and stores).
    _ALIGNED_CONFIGS = _configs([
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 3),
        (64, 128, 32, 4, 3),
        (64, 64, 32, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 32, 64, 4, 3),
        (32, 32, 64, 2, 4),
    ])
    # For the others (MSDNet's odd widths): every element loads through its own 64-bit address,
    # and tiles with more than 16 accumulators a thread spill (ptxas, sm_80 / sm_90).
    _UNALIGNED_CONFIGS = _configs([
        (64, 32, 32, 4, 3),
        (32, 64, 32, 4, 3),
        (32, 32, 32, 2, 4),
    ])
    # For fp32 with IEEE products (FMA, no tensor cores), whatever the alignment: the configs
    # above spill there (up to 4 KB at BLOCK_K = 64); these do not.
    _IEEE_CONFIGS = _configs([
        (64, 32, 32, 8, 3),
        (64, 32, 16, 4, 3),
        (32, 64, 16, 4, 3),
        (32, 32, 32, 4, 3),
    ])
_CONFIGS = list(dict.fromkeys(_ALIGNED_CONFIGS + _UNALIGNED_CONFIGS + _IEEE_CONFIGS))


def _size_class(m: int) -> int:
    """The autotuner's size class of a GEMM with m = N * H_out * W_out rows: the next power of two,
    so the active-batch sizes that follow each exit share a handful of tuned configs."""
    return triton.next_power_of_2(m)


@triton.jit
def _relu(y):
    """max(y, 0) keeping NaN (PTX ``max.NaN.f32``; a plain ``max.f32`` would turn NaN into 0, unlike F.relu)."""
    return tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)


def _aligned(args) -> bool:
    """Whether every row the kernel reads or writes starts 16-byte aligned: the pixel rows and
    windows of x and out, and the weight's C_out rows (:func:`conv_weight`'s layout)."""
    size = args["x_ptr"].element_size()
    return args["swo"] == 1 and all(args[a] * size % 16 == 0 for a in ("sxw", "c_in0", "sow", "c_out0", "swi"))


def _prune_configs(configs, named_args, **kwargs):
    """The configs for the products (IEEE fp32) or the alignment (:func:`_aligned`), less 8-warp
    configs for 3x3 and tiles far wider than C_out / C_in."""
    c_out, c_in = named_args["C_out"], named_args["C_in"]
    max_n = max(32, triton.next_power_of_2(c_out))
    max_k = max(32, triton.next_power_of_2(c_in))
    if kwargs["DOT_PRECISION"] == "ieee":
        family = _IEEE_CONFIGS
    else:
        family = _ALIGNED_CONFIGS if _aligned(named_args) else _UNALIGNED_CONFIGS
    kept = [
        c for c in configs
        if c in family and (kwargs["KSIZE"] == 1 or c.num_warps <= 4)
        and c.kwargs["BLOCK_N"] <= max_n and c.kwargs["BLOCK_K"] <= max_k
    ]
    return kept or [min(family, key=lambda c: (c.num_warps, c.kwargs["BLOCK_N"]))]


@triton.autotune(
    configs=_CONFIGS,
    # M_CLASS, not N: after each exit the batch shrinks, and an exact N would re-tune every layer
    # at every new active-batch size. The alignment of the windows and weight rows decides which
    # tiles _prune_configs keeps, so its inputs are in the key as well (all fixed per layer).
    key=["M_CLASS", "H", "W", "C_in", "C_out", "c_in0", "c_out0", "sxw", "sow", "swo", "swi", "KSIZE", "STRIDE",
         "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit(do_not_specialize=["M_CLASS"])
def _conv_nhwc_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, in_scale_ptr, in_shift_ptr, out_ptr, n_active_ptr,
    N, H, W, C_in, H_out, W_out, C_out, c_in0, c_out0, M_CLASS,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    son, soc, soh, sow,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    RELU: tl.constexpr, PROLOGUE: tl.constexpr, HAS_N_ACTIVE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # M_CLASS (the autotuner's size class of N * H_out * W_out) is not used here.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    hw_out = H_out * W_out
    if HAS_N_ACTIVE:
        n_rows = tl.minimum(tl.maximum(tl.load(n_active_ptr).to(tl.int32), 0), N)
    else:
        n_rows = N
    # N * H_out * W_out may pass 2^31: the tile's first pixel is split into (image, pixel) in
    # int64 once, and the per-element index math stays in int32 within a few images.
    m0 = pid_m.to(tl.int64) * BLOCK_M
    if m0 >= tl.cast(n_rows, tl.int64) * hw_out:  # a cast, not .to: N == 1 arrives as a constant
        return
    img0 = m0 // hw_out
    local = (m0 - img0 * hw_out).to(tl.int32) + tl.arange(0, BLOCK_M)
    img = img0 + local // hw_out
    pix = local % hw_out
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = img < n_rows
    n_mask = offs_n < C_out
    oh = pix // W_out
    ow = pix % W_out
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    x_img = x_ptr + img * sxn + c_in0 * sxc

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
            a_act = _relu(a.to(tl.float32) * s_in[None, :] + b_in[None, :])
            a = tl.where(a_mask, a_act, 0.0).to(x_ptr.dtype.element_ty)
        b_ptrs = w_ptr + kh * swh + kw * sww + ck[:, None] * swi + offs_n[None, :] * swo
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    scale = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    shift = tl.load(shift_ptr + offs_n, mask=n_mask, other=0.0)
    y = acc * scale[None, :] + shift[None, :]
    if RELU:
        y = _relu(y)
    o_rows = out_ptr + img * son + oh * soh + ow * sow + c_out0 * soc
    o_ptrs = o_rows[:, None] + offs_n[None, :] * soc
    tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ----------------------------------------------------------------------------- ops


def _launch(x, weight, scale, shift, out, *, stride, padding, relu, c_in0, c_out0, in_scale, in_shift, n_active):
    """Launches the kernel on checked arguments, on x's device and its current stream; skips empty batches."""
    n, _, h, w = x.shape
    c_out, c_in, k, _ = weight.shape
    h_out, w_out = out.shape[2], out.shape[3]
    if n == 0:
        return
    scale, shift = scale.contiguous(), shift.contiguous()
    prologue = in_scale is not None
    in_scale, in_shift = (in_scale.contiguous(), in_shift.contiguous()) if prologue else (scale, shift)  # unused
    tf32 = x.dtype != torch.float32 or torch.backends.cudnn.allow_tf32

    def grid(meta):
        return triton.cdiv(n * h_out * w_out, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"])

    # Triton launches on the current device's current stream: make that x's device.
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _conv_nhwc_kernel[grid](
            x, weight, scale, shift, in_scale, in_shift, out, n_active if n_active is not None else scale,
            n, h, w, c_in, h_out, w_out, c_out, c_in0, c_out0, _size_class(n * h_out * w_out),
            x.stride(0), x.stride(1), x.stride(2), x.stride(3),
            weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3),
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            KSIZE=k, STRIDE=stride, PAD=padding, RELU=relu, PROLOGUE=prologue,
            HAS_N_ACTIVE=n_active is not None, DOT_PRECISION="tf32" if tf32 else "ieee",
        )


@torch.library.custom_op("eexit::conv2d_nhwc", mutates_args=("out",))
def _conv2d_op(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor,
    stride: int = 1, padding: int = 0, relu: bool = True, c_in0: int = 0, c_out0: int = 0,
    in_scale: Optional[torch.Tensor] = None, in_shift: Optional[torch.Tensor] = None,
    n_active: Optional[torch.Tensor] = None,
) -> None:
    """torch.ops.eexit.conv2d_nhwc: :func:`conv2d_nhwc` into a required ``out``, returning nothing."""
    check_conv_args(x, weight, scale, shift, out, stride=stride, padding=padding, c_in0=c_in0, c_out0=c_out0,
                    in_scale=in_scale, in_shift=in_shift, n_active=n_active, interpret=_INTERPRET)
    _launch(x, weight, scale, shift, out, stride=stride, padding=padding, relu=relu, c_in0=c_in0, c_out0=c_out0,
            in_scale=in_scale, in_shift=in_shift, n_active=n_active)


@_conv2d_op.register_fake
def _conv2d_fake(x, weight, scale, shift, out, stride=1, padding=0, relu=True, c_in0=0, c_out0=0,
                 in_scale=None, in_shift=None, n_active=None) -> None:
    check_conv_args(x, weight, scale, shift, out, stride=stride, padding=padding, c_in0=c_in0, c_out0=c_out0,
                    in_scale=in_scale, in_shift=in_shift, n_active=n_active, interpret=_INTERPRET)


@torch.library.custom_op("eexit::bottleneck_nhwc", mutates_args=("out",))
def _bottleneck_op(
    x: torch.Tensor, w1: torch.Tensor, scale1: torch.Tensor, shift1: torch.Tensor, w2: torch.Tensor,
    scale2: torch.Tensor, shift2: torch.Tensor, out: torch.Tensor, stride: int = 1, relu1: bool = True,
    relu2: bool = True, c_in0: int = 0, c_out0: int = 0, in_scale: Optional[torch.Tensor] = None,
    in_shift: Optional[torch.Tensor] = None, n_active: Optional[torch.Tensor] = None,
) -> None:
    """torch.ops.eexit.bottleneck_nhwc: :func:`bottleneck_nhwc` into a required ``out``, returning nothing."""
    check_bottleneck_args(x, w1, scale1, shift1, w2, scale2, shift2, out, stride=stride, c_in0=c_in0,
                          c_out0=c_out0, in_scale=in_scale, in_shift=in_shift, n_active=n_active,
                          interpret=_INTERPRET)
    n, _, h, w = x.shape
    mid = torch.empty((n, w1.shape[0], h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    _launch(x, w1, scale1, shift1, mid, stride=1, padding=0, relu=relu1, c_in0=c_in0, c_out0=0,
            in_scale=in_scale, in_shift=in_shift, n_active=n_active)
    _launch(mid, w2, scale2, shift2, out, stride=stride, padding=1, relu=relu2, c_in0=0, c_out0=c_out0,
            in_scale=None, in_shift=None, n_active=n_active)


@_bottleneck_op.register_fake
def _bottleneck_fake(x, w1, scale1, shift1, w2, scale2, shift2, out, stride=1, relu1=True, relu2=True,
                     c_in0=0, c_out0=0, in_scale=None, in_shift=None, n_active=None) -> None:
    check_bottleneck_args(x, w1, scale1, shift1, w2, scale2, shift2, out, stride=stride, c_in0=c_in0,
                          c_out0=c_out0, in_scale=in_scale, in_shift=in_shift, n_active=n_active,
                          interpret=_INTERPRET)


# ----------------------------------------------------------------------------- public API


def _new_out(shape, x: torch.Tensor) -> torch.Tensor:
    """An uninitialised channels_last ``out`` of the given shape, on x's device, in x's dtype."""
    return torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)


def conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight in the layout the kernels read fastest, to prepare once per weight (e.g. with
    the folded BatchNorm).

    Args:
        weight: ``[C_out, C_in, k, k]``, any dtype, device and strides.

    Returns:
        The same values, shape and dtype, with C_out fastest in memory (neighbouring output
        channels adjacent: coalesced B-tile loads) and each (tap, input channel) row of
        C_out padded with zeros to a multiple of 16 elements (aligned vector loads, whatever
        C_out is). Strides ``(1, C_pad, k * C_in * C_pad, C_in * C_pad)``.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"conv_weight: weight must be a tensor [C_out, C_in, k, k], got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    c_out, c_in, kh, kw = weight.shape
    rows = weight.new_zeros((kh, kw, c_in, c_out + -c_out % 16))
    rows[..., :c_out] = weight.permute(2, 3, 1, 0)
    return rows[..., :c_out].permute(3, 2, 0, 1)


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

    Runs the op ``torch.ops.eexit.conv2d_nhwc`` (which mutates ``out``), allocating out first
    when None.

    Args:
        x: ``[N, C_total_in, H, W]`` channels_last, float32/float16/bfloat16 (CUDA, or CPU
            under ``TRITON_INTERPRET=1``).
        weight: ``[C_out, C_in, k, k]``, k in {1, 3}, dtype of x, any strides (the layout of
            :func:`conv_weight` loads fastest).
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
    shape = check_conv_args(x, weight, scale, shift, out, stride=stride, padding=padding, c_in0=c_in0,
                            c_out0=c_out0, in_scale=in_scale, in_shift=in_shift, n_active=n_active,
                            interpret=_INTERPRET)
    out = _new_out(shape, x) if out is None else out
    _conv2d_op(x, weight, scale, shift, out, stride=stride, padding=padding, relu=bool(relu), c_in0=c_in0,
               c_out0=c_out0, in_scale=in_scale, in_shift=in_shift, n_active=n_active)
    return out


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

    Runs the op ``torch.ops.eexit.bottleneck_nhwc`` (which mutates ``out``): two launches
    through a scratch ``[N, inner, H, W]`` buffer (see the module docstring).

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
    shape = check_bottleneck_args(x, w1, scale1, shift1, w2, scale2, shift2, out, stride=stride, c_in0=c_in0,
                                  c_out0=c_out0, in_scale=in_scale, in_shift=in_shift, n_active=n_active,
                                  interpret=_INTERPRET)
    out = _new_out(shape, x) if out is None else out
    _bottleneck_op(x, w1, scale1, shift1, w2, scale2, shift2, out, stride=stride, relu1=bool(relu1),
                   relu2=bool(relu2), c_in0=c_in0, c_out0=c_out0, in_scale=in_scale, in_shift=in_shift,
                   n_active=n_active)
    return out
