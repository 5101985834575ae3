"""Tests of the Triton NHWC conv kernels (eexit.kernels.conv) against torch.nn.functional.conv2d.

Run under the Triton interpreter on CPU at tiny shapes (the interpreter's block config is
32 x 8 x 8, so the shapes below give partial M, N and K tiles, tiles straddling images and
images straddling n_active). test_compiled_vs_torch re-runs this file as a script in a child
process without TRITON_INTERPRET to check the compiled kernels on a GPU.
"""
import os
import sys

_COMPILED_RUN = __name__ == "__main__"  # child process of test_compiled_vs_torch
if not _COMPILED_RUN:
    os.environ["TRITON_INTERPRET"] = "1"

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

# Tolerances of the kernel output vs a float64 reference, by dtype (bf16: compiled GPU run only).
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=8e-2, rtol=3e-2),
}
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
CL = torch.channels_last


def _load_conv():
    """eexit.kernels.conv, or kernels/conv.py next to this file; a private copy if the
    imported one was built for the other TRITON_INTERPRET mode."""
    try:
        from eexit.kernels import conv

        if conv._INTERPRET == (not _COMPILED_RUN):
            return conv
        path = conv.__file__
    except ImportError:
        path = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "conv.py"
    spec = importlib.util.spec_from_file_location("_eexit_kernels_conv_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conv = _load_conv()


# ----------------------------------------------------------------------------- helpers


def _nhwc(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype).to(memory_format=CL)


def _affine(n, device="cpu"):
    """A float32 (scale, shift) pair of length n."""
    return torch.rand(n, device=device) + 0.5, torch.randn(n, device=device) * 0.5


def _weight(c_out, c_in, k, dtype, device="cpu"):
    return (torch.randn(c_out, c_in, k, k, device=device) / (c_in * k * k) ** 0.5).to(dtype)


def _ref_conv(x, c_in0, w, scale, shift, *, stride, padding, relu, in_affine=None):
    """float64 relu?(conv(pre(x[:, window])) * scale + shift) on x's device."""
    xs = x[:, c_in0:c_in0 + w.shape[1]].double()
    if in_affine is not None:
        s, b = (t.double()[:, None, None] for t in in_affine)
        xs = torch.relu(xs * s + b)
    y = F.conv2d(xs, w.double(), stride=stride, padding=padding)
    y = y * scale.double()[:, None, None] + shift.double()[:, None, None]
    return torch.relu(y) if relu else y


def _poisoned_out(n, c_total, h, w, c_out0, c_out, dtype, device="cpu"):
    """Random buffer with NaN in the window (so unwritten elements fail the value check)."""
    out = _nhwc(n, c_total, h, w, dtype=dtype, device=device)
    out[:, c_out0:c_out0 + c_out] = float("nan")
    return out


def _check_out(out, before, ref, c_out0, n_act, tol, what):
    """Window rows < n_act match ref; everything else is bitwise unchanged."""
    c_out = ref.shape[1]
    torch.testing.assert_close(out[:n_act, c_out0:c_out0 + c_out].double(), ref[:n_act], **tol,
                               msg=lambda m: f"{what}: {m}")
    keep = torch.ones(out.shape, dtype=torch.bool, device=out.device)
    keep[:n_act, c_out0:c_out0 + c_out] = False
    bits = _BITS[out.dtype]
    changed = (out.view(bits) != before.view(bits)) & keep
    assert not changed.any(), f"{what}: {int(changed.sum())} elements outside the window / active rows changed"


# ----------------------------------------------------------------------------- conv2d_nhwc

# (N, C_total_in, c_in0, C_in, H, W, C_out, c_out0, k, stride, padding, prologue, relu, n_active, dtype)
CONV_CASES = [
    (3, 12, 0, 12, 5, 7, 10, 1, 1, 1, 0, False, True, None, torch.float32),
    (1, 14, 3, 9, 7, 3, 12, 2, 1, 1, 0, True, True, None, torch.float16),
    (3, 6, 1, 5, 7, 5, 4, 1, 1, 2, 0, True, False, 2, torch.float32),
    (3, 12, 2, 9, 5, 6, 11, 3, 3, 1, 1, True, True, 2, torch.float32),
    (1, 12, 0, 12, 7, 7, 6, 1, 3, 1, 1, False, False, None, torch.float16),
    (3, 8, 1, 7, 7, 5, 12, 1, 3, 2, 1, True, True, 1, torch.float16),
    (1, 8, 4, 4, 6, 7, 5, 2, 3, 2, 1, False, False, None, torch.float32),
    (3, 5, 0, 5, 5, 5, 3, 1, 3, 1, 0, False, True, 3, torch.float32),
    (2, 4, 1, 3, 3, 4, 7, 1, 3, 2, 2, True, True, None, torch.float16),
]


def _case_id(case):
    n, _, c_in0, c_in, h, w, c_out, c_out0, k, s, p, pro, relu, n_act, dtype = case
    return (f"{k}x{k}s{s}p{p}-N{n}-{h}x{w}-cin{c_in0}+{c_in}-cout{c_out0}+{c_out}{'-pre' if pro else ''}"
            f"{'' if relu else '-norelu'}{'' if n_act is None else f'-act{n_act}'}-{str(dtype)[6:]}")


@pytest.mark.parametrize("case", CONV_CASES, ids=[_case_id(c) for c in CONV_CASES])
def test_conv_matches_torch(case):
    n, c_total, c_in0, c_in, h, w, c_out, c_out0, k, stride, padding, prologue, relu, n_act, dtype = case
    x = _nhwc(n, c_total, h, w, dtype=dtype)
    weight = _weight(c_out, c_in, k, dtype)
    scale, shift = _affine(c_out)
    in_affine = _affine(c_in) if prologue else None
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = _poisoned_out(n, c_out0 + c_out + 2, h_out, w_out, c_out0, c_out, dtype)
    before = out.clone()
    x_before = x.clone()
    n_active = None if n_act is None else torch.tensor(n_act, dtype=torch.int32)
    res = conv.conv2d_nhwc(x, weight, scale, shift, stride=stride, padding=padding, relu=relu, out=out,
                           c_in0=c_in0, c_out0=c_out0, n_active=n_active,
                           in_scale=None if in_affine is None else in_affine[0],
                           in_shift=None if in_affine is None else in_affine[1])
    assert res is out
    ref = _ref_conv(x, c_in0, weight, scale, shift, stride=stride, padding=padding, relu=relu, in_affine=in_affine)
    _check_out(out, before, ref, c_out0, n if n_act is None else n_act, TOL[dtype], _case_id(case))
    assert torch.equal(x, x_before)


def test_conv_allocates_out():
    x = _nhwc(3, 6, 5, 4, dtype=torch.float16)
    weight = _weight(5, 6, 3, torch.float16)
    scale, shift = _affine(5)
    out = conv.conv2d_nhwc(x, weight, scale, shift, stride=2, padding=1)
    assert out.shape == (3, 5, 3, 2) and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=CL)
    ref = _ref_conv(x, 0, weight, scale, shift, stride=2, padding=1, relu=True)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float16])


def test_conv_in_place_dense_append():
    """x and out are one feature buffer: read channels [1, 7), append 4 channels at [8, 12)."""
    buf = _nhwc(3, 13, 5, 6)
    weight = _weight(4, 6, 3, torch.float32)
    scale, shift = _affine(4)
    buf[:, 8:12] = float("nan")
    before = buf.clone()
    ref = _ref_conv(buf, 1, weight, scale, shift, stride=1, padding=1, relu=True)
    n_active = torch.tensor([2], dtype=torch.int64)
    conv.conv2d_nhwc(buf, weight, scale, shift, padding=1, out=buf, c_in0=1, c_out0=8, n_active=n_active)
    _check_out(buf, before, ref, 8, 2, TOL[torch.float32], "in-place")


def test_conv_n_active_zero_writes_nothing():
    x = _nhwc(2, 4, 3, 3)
    weight = _weight(3, 4, 1, torch.float32)
    scale, shift = _affine(3)
    out = _nhwc(2, 3, 3, 3)
    before = out.clone()
    conv.conv2d_nhwc(x, weight, scale, shift, out=out, n_active=torch.tensor(0))
    assert torch.equal(out.view(torch.int32), before.view(torch.int32))


# ----------------------------------------------------------------------------- bottleneck_nhwc

# (N, C_total_in, c_in0, C_in, H, W, inner, C_out, c_out0, stride, prologue, relu2, n_active, dtype)
BOTTLENECK_CASES = [
    (3, 12, 1, 10, 5, 7, 8, 6, 2, 1, True, True, 2, torch.float32),
    (1, 9, 0, 9, 7, 6, 12, 5, 1, 2, False, False, None, torch.float16),
    (3, 7, 2, 5, 7, 5, 6, 9, 1, 2, True, False, None, torch.float32),
    (2, 8, 0, 8, 4, 5, 4, 3, 3, 1, True, True, 1, torch.float16),
]


@pytest.mark.parametrize("case", BOTTLENECK_CASES, ids=[f"case{i}" for i in range(len(BOTTLENECK_CASES))])
def test_bottleneck_matches_torch(case):
    n, c_total, c_in0, c_in, h, w, inner, c_out, c_out0, stride, prologue, relu2, n_act, dtype = case
    x = _nhwc(n, c_total, h, w, dtype=dtype)
    w1, w2 = _weight(inner, c_in, 1, dtype), _weight(c_out, inner, 3, dtype)
    (scale1, shift1), (scale2, shift2) = _affine(inner), _affine(c_out)
    in_affine = _affine(c_in) if prologue else None
    h_out, w_out = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = _poisoned_out(n, c_out0 + c_out + 1, h_out, w_out, c_out0, c_out, dtype)
    before = out.clone()
    n_active = None if n_act is None else torch.tensor(n_act)
    conv.bottleneck_nhwc(x, w1, scale1, shift1, w2, scale2, shift2, stride=stride, relu2=relu2, out=out,
                         c_in0=c_in0, c_out0=c_out0, n_active=n_active,
                         in_scale=None if in_affine is None else in_affine[0],
                         in_shift=None if in_affine is None else in_affine[1])
    mid = _ref_conv(x, c_in0, w1, scale1, shift1, stride=1, padding=0, relu=True, in_affine=in_affine)
    mid = mid.to(dtype)  # the scratch buffer holds x's dtype
    ref = _ref_conv(mid, 0, w2, scale2, shift2, stride=stride, padding=1, relu=relu2)
    _check_out(out, before, ref, c_out0, n if n_act is None else n_act, TOL[dtype], f"bottleneck {case}")


# ----------------------------------------------------------------------------- argument errors


def _conv_args():
    x = _nhwc(2, 6, 5, 5)
    weight = _weight(4, 6, 3, torch.float32)
    scale, shift = _affine(4)
    return dict(x=x, weight=weight, scale=scale, shift=shift, padding=1)


_NCHW = torch.randn(2, 6, 5, 5)
_BAD_CONV = [
    ("x-type", dict(x=_NCHW.numpy()), TypeError, "x must be a torch.Tensor"),
    ("x-rank", dict(x=torch.randn(6, 5, 5)), ValueError, "x must have shape"),
    ("x-dtype", dict(x=_NCHW.double().to(memory_format=CL)), TypeError, "x must be float32"),
    ("x-layout", dict(x=_NCHW), ValueError, "x must be channels_last"),
    ("weight-dtype", dict(weight=torch.randn(4, 6, 3, 3).half()), TypeError, "weight must be torch.float32"),
    ("weight-ksize", dict(weight=torch.randn(4, 6, 2, 2)), ValueError, "weight must have shape"),
    ("weight-device", dict(weight=torch.randn(4, 6, 3, 3, device="meta")), ValueError, "weight is on meta"),
    ("scale-shape", dict(scale=torch.ones(5)), ValueError, "scale must have shape"),
    ("shift-dtype", dict(shift=torch.zeros(4).half()), TypeError, "shift must be torch.float32"),
    ("stride-value", dict(stride=3), ValueError, "stride must be one of"),
    ("stride-type", dict(stride=1.0), TypeError, "stride must be an int"),
    ("padding", dict(padding=-1), ValueError, "padding must be >= 0"),
    ("c_in0-negative", dict(c_in0=-1), ValueError, "c_in0 must be >= 0"),
    ("c_in0-window", dict(weight=torch.randn(4, 4, 3, 3), c_in0=3), ValueError, r"window \[c_in0"),
    ("c_out0-no-out", dict(c_out0=1), ValueError, "c_out0 must be 0 when out is None"),
    ("out-layout", dict(out=torch.empty(2, 4, 5, 5)), ValueError, "out must be channels_last"),
    ("out-shape", dict(out=torch.empty(2, 4, 4, 5).to(memory_format=CL)), ValueError, "out must have shape"),
    ("out-dtype", dict(out=torch.empty(2, 4, 5, 5).half().to(memory_format=CL)), TypeError, "out must be"),
    ("c_out0-window", dict(out=torch.empty(2, 6, 5, 5).to(memory_format=CL), c_out0=3), ValueError, "c_out0"),
    ("in_scale-alone", dict(in_scale=torch.ones(6)), ValueError, "in_scale and in_shift"),
    ("in_shift-shape", dict(in_scale=torch.ones(6), in_shift=torch.ones(4)), ValueError, "in_shift must have shape"),
    ("n_active-dtype", dict(n_active=torch.tensor(1.0)), TypeError, "n_active must be int32 or int64"),
    ("n_active-shape", dict(n_active=torch.tensor([1, 2])), ValueError, "n_active must be a scalar"),
    ("too-small", dict(x=_nhwc(2, 6, 1, 5), padding=0), ValueError, "too small"),
]


@pytest.mark.parametrize("name,changes,exc,match", _BAD_CONV, ids=[b[0] for b in _BAD_CONV])
def test_conv_bad_arguments(name, changes, exc, match):
    args = {**_conv_args(), **changes}
    with pytest.raises(exc, match=match):
        conv.conv2d_nhwc(args.pop("x"), args.pop("weight"), args.pop("scale"), args.pop("shift"), **args)


def test_conv_memory_sharing():
    """out may share x's storage only where the memory is disjoint or as disjoint windows of x."""
    flat = torch.randn(2 * 400)
    as_nhwc = lambda t: t.view(2, 5, 5, 8).permute(0, 3, 1, 2)  # noqa: E731
    x, far, near = as_nhwc(flat[:400]), as_nhwc(flat[400:]), as_nhwc(flat[200:600])
    weight = _weight(4, 6, 1, torch.float32)
    scale, shift = _affine(4)
    with pytest.raises(ValueError, match="shares memory"):
        conv.conv2d_nhwc(x, weight, scale, shift, out=x, c_in0=0, c_out0=4)
    with pytest.raises(ValueError, match="shares memory"):
        conv.conv2d_nhwc(x, weight, scale, shift, out=near, c_in0=0, c_out0=4)
    before = far.clone()
    conv.conv2d_nhwc(x, weight, scale, shift, out=far, c_in0=2, c_out0=1)
    ref = _ref_conv(x, 2, weight, scale, shift, stride=1, padding=0, relu=True)
    _check_out(far, before, ref, 1, 2, TOL[torch.float32], "disjoint memory in one storage")


def test_bottleneck_bad_arguments():
    x = _nhwc(2, 6, 5, 5)
    w1, w2 = _weight(4, 6, 1, torch.float32), _weight(3, 4, 3, torch.float32)
    (s1, b1), (s2, b2) = _affine(4), _affine(3)
    with pytest.raises(ValueError, match="w1 must have shape .* 1x1"):
        conv.bottleneck_nhwc(x, w2, s1, b1, w2, s2, b2)
    with pytest.raises(ValueError, match="w2 must have shape .* 3x3"):
        conv.bottleneck_nhwc(x, w1, s1, b1, w1, s2, b2)
    with pytest.raises(ValueError, match="w2 must have C_in = 4"):
        conv.bottleneck_nhwc(x, w1, s1, b1, _weight(3, 5, 3, torch.float32), s2, b2)
    with pytest.raises(ValueError, match="scale1 must have shape"):
        conv.bottleneck_nhwc(x, w1, s2, b1, w2, s2, b2)
    with pytest.raises(TypeError, match="stride must be an int"):
        conv.bottleneck_nhwc(x, w1, s1, b1, w2, s2, b2, stride=True)


# ----------------------------------------------------------------------------- compiled (GPU)


def _compiled_check():
    """Compiled kernels vs F.conv2d on CUDA in fp16/bf16 (run in a child process)."""
    torch.manual_seed(0)
    dev = "cuda"
    for dtype in (torch.float16, torch.bfloat16):
        tol = TOL[dtype]
        for k, stride, pad, prologue, n_act in [(1, 1, 0, True, 5), (3, 1, 1, True, None), (3, 2, 1, False, 3)]:
            n, c_total, c_in0, c_in, c_out, c_out0 = 6, 80, 8, 67, 40, 5
            x = _nhwc(n, c_total, 15, 13, dtype=dtype, device=dev)
            weight = _weight(c_out, c_in, k, dtype, dev)
            scale, shift = _affine(c_out, dev)
            in_affine = _affine(c_in, dev) if prologue else None
            h_out, w_out = (15 + 2 * pad - k) // stride + 1, (13 + 2 * pad - k) // stride + 1
            out = _poisoned_out(n, c_out0 + c_out + 3, h_out, w_out, c_out0, c_out, dtype, dev)
            before = out.clone()
            conv.conv2d_nhwc(x, weight, scale, shift, stride=stride, padding=pad, out=out, c_in0=c_in0,
                             c_out0=c_out0, n_active=None if n_act is None else torch.tensor(n_act, device=dev),
                             in_scale=None if in_affine is None else in_affine[0],
                             in_shift=None if in_affine is None else in_affine[1])
            ref = _ref_conv(x, c_in0, weight, scale, shift, stride=stride, padding=pad, relu=True, in_affine=in_affine)
            _check_out(out, before, ref, c_out0, n if n_act is None else n_act, tol, f"{dtype} {k}x{k} s{stride}")
        x = _nhwc(4, 96, 14, 14, dtype=dtype, device=dev)
        w1, w2 = _weight(128, 96, 1, dtype, dev), _weight(32, 128, 3, dtype, dev)
        (s1, b1), (s2, b2) = _affine(128, dev), _affine(32, dev)
        out = conv.bottleneck_nhwc(x, w1, s1, b1, w2, s2, b2)
        mid = _ref_conv(x, 0, w1, s1, b1, stride=1, padding=0, relu=True).to(dtype)
        ref = _ref_conv(mid, 0, w2, s2, b2, stride=1, padding=1, relu=True)
        torch.testing.assert_close(out.double(), ref, **tol)
    torch.cuda.synchronize()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_vs_torch():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


if _COMPILED_RUN:
    _compiled_check()
    print("compiled kernels match F.conv2d")
