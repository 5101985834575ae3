"""Tests of the Triton NHWC conv kernels (eexit.kernels) against torch.nn.functional.conv2d, and of
their torch.library ops: opcheck, torch.compile(fullgraph=True) and the shared argument checks.

By default (tests/conftest.py) they run under the Triton interpreter on CPU at tiny shapes (the
interpreter's block config is 32 x 8 x 8, so the shapes below give partial M, N and K tiles, tiles
straddling images and images straddling n_active). ``EEXIT_TEST_GPU=1 pytest tests/kernels``
runs the compiled kernels on a CUDA GPU, adding bfloat16 (wrong in the interpreter) and larger
shapes (the autotuned GPU tiles).
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from helpers import KERNEL_TOL as TOL
from helpers import TRITON_DEVICE as DEVICE
from helpers import TRITON_INTERPRET as INTERPRET
from helpers import require_triton_device

require_triton_device()

from eexit import kernels  # noqa: E402

_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
CL = torch.channels_last


# ----------------------------------------------------------------------------- helpers


def _nhwc(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype).to(memory_format=CL)


def _affine(n):
    """A float32 (scale, shift) pair of length n."""
    return torch.rand(n, device=DEVICE) + 0.5, torch.randn(n, device=DEVICE) * 0.5


def _weight(c_out, c_in, k, dtype=torch.float32):
    return (torch.randn(c_out, c_in, k, k, device=DEVICE) / (c_in * k * k) ** 0.5).to(dtype)


def _ref_conv(x, c_in0, w, scale, shift, *, stride, padding, relu, in_affine=None):
    """float64 relu?(conv(pre(x[:, window])) * scale + shift) on x's device."""
    xs = x[:, c_in0:c_in0 + w.shape[1]].double()
    if in_affine is not None:
        s, b = (t.double()[:, None, None] for t in in_affine)
        xs = torch.relu(xs * s + b)
    y = F.conv2d(xs, w.double(), stride=stride, padding=padding)
    y = y * scale.double()[:, None, None] + shift.double()[:, None, None]
    return torch.relu(y) if relu else y


def _poisoned_out(n, c_total, h, w, c_out0, c_out, dtype):
    """Random buffer with NaN in the window (so unwritten elements fail the value check); the
    channels around the window are the guard regions _check_out finds unchanged."""
    out = _nhwc(n, c_total, h, w, dtype=dtype)
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


def _with_bf16(cases):
    """The cases, plus each float16 one in bfloat16 on the GPU."""
    return cases if INTERPRET else cases + [(*c[:-1], torch.bfloat16) for c in cases if c[-1] == torch.float16]


# ----------------------------------------------------------------------------- conv2d_nhwc

# (N, C_total_in, c_in0, C_in, H, W, C_out, c_out0, k, stride, padding, prologue, relu, n_active, dtype)
CONV_CASES = _with_bf16([
    (3, 12, 0, 12, 5, 7, 10, 1, 1, 1, 0, False, True, None, torch.float32),
    (1, 14, 3, 9, 7, 3, 12, 2, 1, 1, 0, True, True, None, torch.float16),
    (3, 6, 1, 5, 7, 5, 4, 1, 1, 2, 0, True, False, 2, torch.float32),
    (3, 12, 2, 9, 5, 6, 11, 3, 3, 1, 1, True, True, 2, torch.float32),
    (1, 12, 0, 12, 7, 7, 6, 1, 3, 1, 1, False, False, None, torch.float16),
    (3, 8, 1, 7, 7, 5, 12, 1, 3, 2, 1, True, True, 1, torch.float16),
    (1, 8, 4, 4, 6, 7, 5, 2, 3, 2, 1, False, False, None, torch.float32),
    (3, 5, 0, 5, 5, 5, 3, 1, 3, 1, 0, False, True, 3, torch.float32),
    (2, 4, 1, 3, 3, 4, 7, 1, 3, 2, 2, True, True, None, torch.float16),
])


def _case_id(case):
    n, _, c_in0, c_in, h, w, c_out, c_out0, k, s, p, pro, relu, n_act, dtype = case
    return (f"{k}x{k}s{s}p{p}-N{n}-{h}x{w}-cin{c_in0}+{c_in}-cout{c_out0}+{c_out}{'-pre' if pro else ''}"
            f"{'' if relu else '-norelu'}{'' if n_act is None else f'-act{n_act}'}-{str(dtype)[6:]}")


def _run_conv_case(case):
    """Runs one conv case into a poisoned out window and checks the window and its guard regions."""
    n, c_total, c_in0, c_in, h, w, c_out, c_out0, k, stride, padding, prologue, relu, n_act, dtype = case
    x = _nhwc(n, c_total, h, w, dtype=dtype)
    weight = _weight(c_out, c_in, k, dtype)
    scale, shift = _affine(c_out)
    in_affine = _affine(c_in) if prologue else None
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = _poisoned_out(n, c_out0 + c_out + 2, h_out, w_out, c_out0, c_out, dtype)
    before = out.clone()
    x_before = x.clone()
    n_active = None if n_act is None else torch.tensor(n_act, dtype=torch.int32, device=DEVICE)
    res = kernels.conv2d_nhwc(x, weight, scale, shift, stride=stride, padding=padding, relu=relu, out=out,
                              c_in0=c_in0, c_out0=c_out0, n_active=n_active,
                              in_scale=None if in_affine is None else in_affine[0],
                              in_shift=None if in_affine is None else in_affine[1])
    assert res is out
    ref = _ref_conv(x, c_in0, weight, scale, shift, stride=stride, padding=padding, relu=relu, in_affine=in_affine)
    _check_out(out, before, ref, c_out0, n if n_act is None else n_act, TOL[dtype], _case_id(case))
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("case", CONV_CASES, ids=[_case_id(c) for c in CONV_CASES])
def test_conv_matches_torch(case):
    _run_conv_case(case)


@pytest.mark.skipif(INTERPRET, reason="GPU tile sizes; too slow for the interpreter")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,stride,padding,prologue,n_act", [(1, 1, 0, True, 5), (3, 1, 1, True, None),
                                                           (3, 2, 1, False, 3)])
def test_conv_larger_shapes(k, stride, padding, prologue, n_act, dtype):
    _run_conv_case((6, 80, 8, 67, 15, 13, 40, 5, k, stride, padding, prologue, True, n_act, dtype))


def test_conv_allocates_out():
    x = _nhwc(3, 6, 5, 4, dtype=torch.float16)
    weight = _weight(5, 6, 3, torch.float16)
    scale, shift = _affine(5)
    out = kernels.conv2d_nhwc(x, weight, scale, shift, stride=2, padding=1)
    assert out.shape == (3, 5, 3, 2) and out.dtype == torch.float16 and out.device == x.device
    assert out.is_contiguous(memory_format=CL)
    ref = _ref_conv(x, 0, weight, scale, shift, stride=2, padding=1, relu=True)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float16])


def test_conv_in_place_dense_append():
    """x and out are one feature buffer: read channels [1, 7), append 4 channels at [8, 12)."""
    buf = _nhwc(3, 13, 5, 6)
    weight = _weight(4, 6, 3)
    scale, shift = _affine(4)
    buf[:, 8:12] = float("nan")
    before = buf.clone()
    ref = _ref_conv(buf, 1, weight, scale, shift, stride=1, padding=1, relu=True)
    n_active = torch.tensor([2], dtype=torch.int64, device=DEVICE)
    kernels.conv2d_nhwc(buf, weight, scale, shift, padding=1, out=buf, c_in0=1, c_out0=8, n_active=n_active)
    _check_out(buf, before, ref, 8, 2, TOL[torch.float32], "in-place")


def test_conv_n_active_zero_writes_nothing():
    x = _nhwc(2, 4, 3, 3)
    weight = _weight(3, 4, 1)
    scale, shift = _affine(3)
    out = _nhwc(2, 3, 3, 3)
    before = out.clone()
    kernels.conv2d_nhwc(x, weight, scale, shift, out=out, n_active=torch.tensor(0, device=DEVICE))
    assert torch.equal(out.view(torch.int32), before.view(torch.int32))


def test_conv_keeps_nan_through_relu():
    """NaN in x stays NaN through the prologue and epilogue ReLUs (F.relu's rule; on GPU the
    codegen is checked in test_triton_compile.py: max.NaN)."""
    x = _nhwc(2, 4, 3, 3)
    x[1, 2, 1, 1] = float("nan")
    weight = _weight(3, 4, 1)
    scale, shift = _affine(3)
    one, zero = torch.ones(4, device=DEVICE), torch.zeros(4, device=DEVICE)
    y = kernels.conv2d_nhwc(x, weight, scale, shift, in_scale=one, in_shift=zero)
    assert torch.isnan(y[1, :, 1, 1]).all() and not torch.isnan(y[0]).any()


def test_conv_weight_layout():
    w = torch.randn(37, 22, 3, 3)
    p = kernels.conv_weight(w)
    assert torch.equal(p, w) and p.stride() == (1, 48, 3 * 22 * 48, 22 * 48)
    x, (scale, shift), w = _nhwc(2, 22, 5, 5), _affine(37), _weight(37, 22, 3)
    got = kernels.conv2d_nhwc(x, kernels.conv_weight(w), scale, shift, padding=1)
    torch.testing.assert_close(got, kernels.conv2d_nhwc(x, w, scale, shift, padding=1))
    with pytest.raises(ValueError, match="weight"):
        kernels.conv_weight(torch.zeros(3, 3))


def test_autotune_reuses_configs_across_batch_sizes(monkeypatch):
    """The tuning key has N * H_out * W_out's size class, not N: after exits shrink the batch, a
    new N benchmarks only when it enters a new power-of-two class."""
    from eexit.kernels import conv

    tuner = conv._conv_nhwc_kernel
    # 16 x 16 x 16: the smallest tile tl.dot compiles for a GPU (the interpreter takes any)
    two = [conv.triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=w) for w in (1, 2)]
    for name in ("_ALIGNED_CONFIGS", "_UNALIGNED_CONFIGS", "_IEEE_CONFIGS"):
        monkeypatch.setattr(conv, name, two)
    monkeypatch.setattr(tuner, "configs", two)
    monkeypatch.setattr(tuner, "cache", {})
    runs = []
    monkeypatch.setattr(tuner, "_bench", lambda *a, config, **k: runs.append(config) or [1.0, 1.0, 1.0],
                        raising=False)
    weight = _weight(3, 4, 1)
    scale, shift = _affine(3)
    batches = [9, 7, 8, 5, 3, 2, 6, 1, 4, 16, 12]
    for n in batches:
        kernels.conv2d_nhwc(_nhwc(n, 4, 2, 2), weight, scale, shift)
    classes = {conv._size_class(n * 4) for n in batches}  # {4, 8, 16, 32, 64}
    assert len(runs) == 2 * len(classes) == 10
    assert len(tuner.cache) == len(classes)


# ----------------------------------------------------------------------------- bottleneck_nhwc

# (N, C_total_in, c_in0, C_in, H, W, inner, C_out, c_out0, stride, prologue, relu2, n_active, dtype)
BOTTLENECK_CASES = _with_bf16([
    (3, 12, 1, 10, 5, 7, 8, 6, 2, 1, True, True, 2, torch.float32),
    (1, 9, 0, 9, 7, 6, 12, 5, 1, 2, False, False, None, torch.float16),
    (3, 7, 2, 5, 7, 5, 6, 9, 1, 2, True, False, None, torch.float32),
    (2, 8, 0, 8, 4, 5, 4, 3, 3, 1, True, True, 1, torch.float16),
])
if not INTERPRET:
    BOTTLENECK_CASES += [(4, 96, 0, 96, 14, 14, 128, 32, 0, 1, False, True, None, dt)
                         for dt in (torch.float16, torch.bfloat16)]


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
    n_active = None if n_act is None else torch.tensor(n_act, device=DEVICE)
    kernels.bottleneck_nhwc(x, w1, scale1, shift1, w2, scale2, shift2, stride=stride, relu2=relu2, out=out,
                            c_in0=c_in0, c_out0=c_out0, n_active=n_active,
                            in_scale=None if in_affine is None else in_affine[0],
                            in_shift=None if in_affine is None else in_affine[1])
    mid = _ref_conv(x, c_in0, w1, scale1, shift1, stride=1, padding=0, relu=True, in_affine=in_affine)
    mid = mid.to(dtype)  # the scratch buffer holds x's dtype
    ref = _ref_conv(mid, 0, w2, scale2, shift2, stride=stride, padding=1, relu=relu2)
    _check_out(out, before, ref, c_out0, n if n_act is None else n_act, TOL[dtype], f"bottleneck {case}")


# ----------------------------------------------------------------------------- the ops


def _conv_op_args(c_out0=0, extra=0, n_act=None, prologue=False, k=3, stride=1):
    """Arguments of torch.ops.eexit.conv2d_nhwc on x [2, 7, 5, 4] reading channels [1, 7)."""
    x = _nhwc(2, 7, 5, 4)
    weight = _weight(3, 6, k)
    scale, shift = _affine(3)
    pad = k // 2
    h_out, w_out = (5 + 2 * pad - k) // stride + 1, (4 + 2 * pad - k) // stride + 1
    out = _nhwc(2, c_out0 + 3 + extra, h_out, w_out)
    in_scale, in_shift = _affine(6) if prologue else (None, None)
    n_active = None if n_act is None else torch.tensor(n_act, device=DEVICE)
    return (x, weight, scale, shift, out), dict(stride=stride, padding=pad, c_in0=1, c_out0=c_out0,
                                                in_scale=in_scale, in_shift=in_shift, n_active=n_active)


def _bottleneck_op_args(c_out0=0, extra=0, n_act=None, prologue=False, stride=1):
    """Arguments of torch.ops.eexit.bottleneck_nhwc on x [2, 7, 5, 4] reading channels [1, 7)."""
    x = _nhwc(2, 7, 5, 4)
    w1, w2 = _weight(4, 6, 1), _weight(3, 4, 3)
    (s1, b1), (s2, b2) = _affine(4), _affine(3)
    out = _nhwc(2, c_out0 + 3 + extra, (5 - 1) // stride + 1, (4 - 1) // stride + 1)
    in_scale, in_shift = _affine(6) if prologue else (None, None)
    n_active = None if n_act is None else torch.tensor([n_act], device=DEVICE)
    return (x, w1, s1, b1, w2, s2, b2, out), dict(stride=stride, c_in0=1, c_out0=c_out0, in_scale=in_scale,
                                                  in_shift=in_shift, n_active=n_active)


@pytest.mark.parametrize("op,make,options", [
    ("conv2d_nhwc", _conv_op_args, {}),
    ("conv2d_nhwc", _conv_op_args, dict(c_out0=2, extra=1, n_act=1, prologue=True, k=1)),
    ("conv2d_nhwc", _conv_op_args, dict(c_out0=1, n_act=2, stride=2)),
    ("bottleneck_nhwc", _bottleneck_op_args, {}),
    ("bottleneck_nhwc", _bottleneck_op_args, dict(c_out0=1, extra=2, n_act=1, prologue=True, stride=2)),
], ids=["conv", "conv-1x1-window-pre-act1", "conv-s2-window-act2", "bottleneck", "bottleneck-window-pre-act1-s2"])
def test_opcheck(op, make, options):
    kernels.conv2d_nhwc  # registers the ops
    args, kwargs = make(**options)
    torch.library.opcheck(getattr(torch.ops.eexit, op).default, args, kwargs)


@pytest.mark.parametrize("backend,dynamic", [("aot_eager", False), ("aot_eager", True), ("inductor", False)])
def test_compile_fullgraph(backend, dynamic):
    """A small function of both ops, with in-place channel windows of one buffer, allocated
    outputs and n_active, compiled whole (no graph break) equals eager, buffer included."""
    buf = _nhwc(3, 10, 4, 5)
    conv_w, (cs, cb) = _weight(3, 4, 3), _affine(3)
    w1, w2, head = _weight(4, 7, 1), _weight(3, 4, 3), _weight(2, 10, 1)
    (s1, b1), (s2, b2), (si, bi), (hs, hb) = _affine(4), _affine(3), _affine(7), _affine(2)
    n_active = torch.tensor(2, device=DEVICE)

    def f(buf):
        kernels.conv2d_nhwc(buf, conv_w, cs, cb, padding=1, out=buf, c_out0=4, n_active=n_active)
        kernels.bottleneck_nhwc(buf, w1, s1, b1, w2, s2, b2, out=buf, c_out0=7, in_scale=si, in_shift=bi,
                                n_active=n_active)
        return kernels.conv2d_nhwc(buf, head, hs, hb, relu=False) * 2

    want_buf = buf.clone()
    want = f(want_buf)
    torch._dynamo.reset()
    got_buf = buf.clone()
    got = torch.compile(f, backend=backend, fullgraph=True, dynamic=dynamic)(got_buf)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(got_buf, want_buf, **TOL[torch.float32])


def test_importing_the_package_needs_no_triton():
    """eexit.kernels loads Triton, and registers the ops, on first access to a kernel."""
    script = ("import sys, torch, eexit.kernels as k\n"
              "assert 'triton' not in sys.modules and not hasattr(torch.ops.eexit, 'conv2d_nhwc')\n"
              "k.bottleneck_nhwc\n"
              "assert 'triton' in sys.modules and hasattr(torch.ops.eexit, 'conv2d_nhwc')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- argument errors


def _conv_args():
    x = _nhwc(2, 6, 5, 5)
    weight = _weight(4, 6, 3)
    scale, shift = _affine(4)
    return dict(x=x, weight=weight, scale=scale, shift=shift, padding=1)


_NCHW = torch.randn(2, 6, 5, 5)
# (id, changed arguments (CPU tensors, moved to DEVICE by the test), exception, message); the
# op's schema admits all but the _WRAPPER_ONLY ones.
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
    ("too-small", dict(x=torch.randn(2, 6, 1, 5).to(memory_format=CL), padding=0), ValueError, "too small"),
]
_WRAPPER_ONLY = {"x-type", "stride-type", "c_out0-no-out"}  # not expressible in the op's schema


def _faked(mode, value):
    """value as a fake tensor of mode when it is a tensor."""
    return mode.from_tensor(value) if isinstance(value, torch.Tensor) else value


def _raised(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


@pytest.mark.parametrize("name,changes,exc,match", _BAD_CONV, ids=[b[0] for b in _BAD_CONV])
def test_conv_bad_arguments(name, changes, exc, match):
    """The wrapper raises the error naming the argument; the op and its fake impl (on FakeTensorMode
    tensors) raise the very same one."""
    changes = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) and not v.is_meta else v for k, v in changes.items()}
    args = {**_conv_args(), **changes}
    with pytest.raises(exc, match=match) as wrapper:
        kernels.conv2d_nhwc(args.pop("x"), args.pop("weight"), args.pop("scale"), args.pop("shift"), **args)
    if name in _WRAPPER_ONLY:
        return
    args = {**_conv_args(), "out": _nhwc(2, 4, 5, 5), **changes}
    op = _raised(lambda: torch.ops.eexit.conv2d_nhwc(**args))
    with FakeTensorMode() as mode:
        fake_args = {k: _faked(mode, v) for k, v in args.items()}
        fake = _raised(lambda: torch.ops.eexit.conv2d_nhwc(**fake_args))
    want = (type(wrapper.value), str(wrapper.value))
    assert (type(op), str(op)) == want and (type(fake), str(fake)) == want


def test_conv_memory_sharing():
    """out may share x's storage only where the memory is disjoint or as disjoint windows of x; the
    fake impl applies the same rule."""
    flat = torch.randn(2 * 400, device=DEVICE)
    as_nhwc = lambda t: t.view(2, 5, 5, 8).permute(0, 3, 1, 2)  # noqa: E731
    x, far, near = as_nhwc(flat[:400]), as_nhwc(flat[400:]), as_nhwc(flat[200:600])
    weight = _weight(4, 6, 1)
    scale, shift = _affine(4)
    for out, c_out0 in [(x, 4), (near, 4)]:
        with pytest.raises(ValueError, match="shares memory"):
            kernels.conv2d_nhwc(x, weight, scale, shift, out=out, c_in0=0, c_out0=c_out0)
        with FakeTensorMode() as mode, pytest.raises(ValueError, match="shares memory"):
            fx, fout = mode.from_tensor(x), mode.from_tensor(out)
            torch.ops.eexit.conv2d_nhwc(fx, *map(mode.from_tensor, (weight, scale, shift)), fout, c_out0=c_out0)
    before = far.clone()
    kernels.conv2d_nhwc(x, weight, scale, shift, out=far, c_in0=2, c_out0=1)
    ref = _ref_conv(x, 2, weight, scale, shift, stride=1, padding=0, relu=True)
    _check_out(far, before, ref, 1, 2, TOL[torch.float32], "disjoint memory in one storage")


def test_errors_under_compile():
    """Under torch.compile the wrapper's checks raise while Dynamo traces it, and the fake impl's
    (storage sharing, not traceable in the wrapper) while it runs the op on fake tensors."""
    args = _conv_args()
    x, weight, scale, shift = args["x"], args["weight"], args["scale"], args["shift"]
    torch._dynamo.reset()
    with pytest.raises(Exception, match="x must be channels_last"):
        torch.compile(lambda t: kernels.conv2d_nhwc(t, weight, scale, shift), fullgraph=True,
                      backend="aot_eager")(x.contiguous())
    torch._dynamo.reset()
    with pytest.raises(Exception, match="out shares memory with x"):
        torch.compile(lambda t: kernels.conv2d_nhwc(t, weight, scale, shift, out=t, padding=1, c_out0=0),
                      fullgraph=True, backend="aot_eager")(x)


def test_bottleneck_bad_arguments():
    x = _nhwc(2, 6, 5, 5)
    w1, w2 = _weight(4, 6, 1), _weight(3, 4, 3)
    (s1, b1), (s2, b2) = _affine(4), _affine(3)
    bad = [
        ((x, w2, s1, b1, w2, s2, b2), {}, ValueError, "w1 must have shape .* 1x1"),
        ((x, w1, s1, b1, w1, s2, b2), {}, ValueError, "w2 must have shape .* 3x3"),
        ((x, w1, s1, b1, _weight(3, 5, 3), s2, b2), {}, ValueError, "w2 must have C_in = 4"),
        ((x, w1, s2, b1, w2, s2, b2), {}, ValueError, "scale1 must have shape"),
        ((x.contiguous(), w1, s1, b1, w2, s2, b2), {}, ValueError, "x must be channels_last"),
        ((x, w1, s1, b1, w2, s2, b2), dict(c_in0=1), ValueError, r"window \[c_in0"),
        ((x, w1, s1, b1, w2, s2, b2), dict(c_out0=1, out=_nhwc(2, 3, 5, 5)), ValueError, r"window \[c_out0"),
    ]
    for args, kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            kernels.bottleneck_nhwc(*args, **kwargs)
        kwargs = {"out": _nhwc(2, 3, 5, 5), **kwargs}
        with FakeTensorMode() as mode, pytest.raises(exc, match=match):
            fake_kwargs = {k: _faked(mode, v) for k, v in kwargs.items()}
            torch.ops.eexit.bottleneck_nhwc(*map(mode.from_tensor, args), **fake_kwargs)
    with pytest.raises(TypeError, match="stride must be an int"):
        kernels.bottleneck_nhwc(x, w1, s1, b1, w2, s2, b2, stride=True)
