"""eexit.ops.max_pool2d against torch.nn.functional.max_pool2d: the same bits (maxima, signed
zeros, NaN positions), shapes and memory formats; its argument checks (Python, fake and C++ alike),
opcheck and torch.compile."""
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from eexit import ops

from helpers import DEVICES, generator, new_seed

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# (kernel_size, stride, padding, ceil_mode): B-LeNet's 2x2/2 and B-AlexNet's 3x3/2 ceil-mode pools,
# MSDNet's 3x3/2 padding 1, and general windows (rectangular, stride 1, stride > kernel).
GEOMETRIES = [
    (2, 2, 0, True), (2, 2, 0, False), (3, 2, 0, True), (3, 2, 1, False), (3, 2, 1, True),
    ((2, 3), (1, 2), (1, 0), True), (3, 1, 1, False), (1, 3, 0, True), (4, 3, 2, True), (5, 2, 2, False),
    ((1, 4), (3, 1), (0, 2), True),
]


def special_values(shape, dtype, gen, nan=0.03, inf=0.03) -> torch.Tensor:
    """randn with NaN, +-inf and +-0 sprinkled in (ties between +0 and -0 test the window order)."""
    x = torch.randn(shape, generator=gen)
    u = torch.rand(shape, generator=gen)
    x[u < 0.15] = 0.0
    x[(u >= 0.15) & (u < 0.3)] = -0.0
    x[(u >= 0.3) & (u < 0.3 + inf)] = float("-inf")
    x[(u >= 0.3 + inf) & (u < 0.3 + 2 * inf)] = float("inf")
    x[u > 1 - nan] = float("nan")
    return x.to(dtype)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, msg: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (msg, got.shape, want.shape)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), f"{msg}: NaN positions differ"
    g, w = got[~nan], want[~nan]
    assert torch.equal(g, w), f"{msg}: values differ, max |diff| {(g.double() - w.double()).abs().max()}"
    assert torch.equal(g.signbit(), w.signbit()), f"{msg}: signs of zeros differ"


def check(x, k, s, p, ceil, msg):
    got = ops.max_pool2d(x, k, s, p, ceil)
    want = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
    assert_same_bits(got, want, msg)
    return got, want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_matches_torch(device, dtype, geometry):
    """Odd and even sizes, contiguous and channels_last inputs (outputs in the same format)."""
    k, s, p, ceil = geometry
    seed = new_seed()
    gen = generator(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    for _ in range(3):
        n = int(torch.randint(1, 5, (), generator=gen))
        c = int(torch.randint(1, 12, (), generator=gen))
        h = int(torch.randint(kh, kh + 14, (), generator=gen))
        w = int(torch.randint(kw, kw + 14, (), generator=gen))
        x = special_values((n, c, h, w), dtype, gen).to(device)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            got, want = check(xf, k, s, p, ceil, f"seed={seed} shape={(n, c, h, w)} {fmt}")
            assert got.is_contiguous(memory_format=fmt)
            if device == "cpu":
                assert got.stride() == want.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_any_strides(device, dtype):
    """Views: channel and batch slices, a cropped plane, a transposed plane, a strided column, a
    channels_last slice; the output is contiguous for every view that is not dense."""
    seed = new_seed()
    gen = generator(seed)
    base = special_values((6, 10, 15, 13), dtype, gen).to(device)
    last = base.contiguous(memory_format=torch.channels_last)
    views = {
        "channel slice": base[:, 1::3], "batch slice": base[::2], "crop": base[:, :, 2:-1, 1:-2],
        "transposed": base.transpose(2, 3), "strided column": base[..., ::2], "channels_last slice": last[:, 2:7],
        "channels_last crop": last[:, :, 1:, 3:],
    }
    for name, x in views.items():
        for k, s, p, ceil in [(2, 2, 0, True), (3, 2, 1, False)]:
            got, _ = check(x, k, s, p, ceil, f"seed={seed} {name}")
            assert got.is_contiguous(), name


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_infinity_rows(device):
    """Windows of NaN only, -inf only, NaN next to +inf, and -inf with one finite value."""
    row = [float("nan"), float("nan"), float("-inf"), float("-inf"), float("nan"), float("inf"), float("-inf"), 2.0,
           float("inf"), float("nan"), -0.0, 0.0]
    x = torch.tensor(row).repeat(2, 3, 3, 1).to(device)
    for fmt, (k, s) in itertools.product((torch.contiguous_format, torch.channels_last), [(2, 2), (3, 3), (1, 1)]):
        got, want = check(x.contiguous(memory_format=fmt), (1, k), (1, s), 0, True, f"{fmt} k={k}")
    got = ops.max_pool2d(x, (1, 2))
    expect = [float("nan"), float("-inf"), float("nan"), 2.0, float("nan"), -0.0]
    assert_same_bits(got[0, 0, 0].cpu(), torch.tensor(expect), "by hand")


@pytest.mark.parametrize("device", DEVICES)
def test_ceil_mode_drops_a_window_that_starts_in_the_right_padding(device):
    """H = 5, kernel 2, stride 2, padding 1, ceil: the rounded-up formula gives 4 rows, but the 4th
    window would start at row 5, in the right padding, so torch keeps 3. W = 7: ceil mode adds a
    window over the last column only (4 columns; 3 without ceil mode)."""
    x = special_values((2, 3, 5, 7), torch.float32, generator(new_seed())).to(device)
    assert check(x, 2, 2, 1, True, "drop")[0].shape == (2, 3, 3, 4)
    assert check(x, 2, 2, 0, True, "ceil")[0].shape == (2, 3, 3, 4)
    assert check(x, 2, 2, 0, False, "floor")[0].shape == (2, 3, 2, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_empty_batch_and_rank_3(device, fmt):
    x = torch.randn(0, 4, 9, 7, device=device).contiguous(memory_format=fmt)
    y = ops.max_pool2d(x, 3, 2, 1, True)
    assert y.shape == F.max_pool2d(x, 3, 2, 1, ceil_mode=True).shape == (0, 4, 5, 4)
    x = special_values((5, 9, 8), torch.float32, generator(new_seed())).to(device)
    check(x, 2, 2, 0, True, "rank 3")
    check(x.transpose(1, 2), 3, 2, 1, False, "rank 3 view")


def test_large_batch_uses_threads_and_stays_exact():
    """Work for several threads (parallel_for over planes and over pixel rows)."""
    seed = new_seed()
    x = special_values((64, 16, 30, 30), torch.float32, generator(seed))
    for fmt in (torch.contiguous_format, torch.channels_last):
        check(x.contiguous(memory_format=fmt), 2, 2, 0, True, f"seed={seed} {fmt}")


STRIDE2 = [(k, 2, p, ceil) for k in (2, 3) for p in (0, 1) for ceil in (True, False)]


@pytest.mark.parametrize("geometry", STRIDE2, ids=str)
def test_stride2_rows_of_any_width(geometry):
    """float32 NCHW at column stride 2 runs the at::vec kernel: widths from one output to several
    vectors of them (whole vectors, an overlapping last vector, a partial one), odd heights; and
    channels_last with channel counts around the vector width."""
    k, s, p, ceil = geometry
    seed = new_seed()
    gen = generator(seed)
    widths = [k, k + 1, 16, 17, 18, 33, 34] + torch.randint(k, 71, (4,), generator=gen).tolist()
    for w in widths:
        h = int(torch.randint(k, 12, (), generator=gen))
        x = special_values((2, 3, h, w), torch.float32, gen)
        check(x, k, s, p, ceil, f"seed={seed} shape={(2, 3, h, w)}")
        check(x[:, 1:], k, s, p, ceil, f"seed={seed} channel slice of {(2, 3, h, w)}")
    for c in (7, 8, 9, 16, 17, 33):  # channels_last float32: vectors of channels, partial / overlapping last
        shape = (2, c, int(torch.randint(k, 12, (), generator=gen)), int(torch.randint(k, 12, (), generator=gen)))
        x = special_values(shape, torch.float32, gen).contiguous(memory_format=torch.channels_last)
        got, _ = check(x, k, s, p, ceil, f"seed={seed} channels_last {shape}")
        assert got.is_contiguous(memory_format=torch.channels_last)


# x (NCHW or channels_last) at the very end of a readable page, the next page unreadable: a read
# past x's last element kills the process. The same checks under ATEN_CPU_CAPABILITY=default run the portable kernel.
GUARD_PAGE_SCRIPT = r"""
import ctypes, mmap, torch, torch.nn.functional as F
from eexit import ops
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
base = libc.mmap(None, 2 * page, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
assert base not in (None, ctypes.c_void_p(-1).value) and libc.mprotect(base + page, page, 0) == 0  # PROT_NONE
g = torch.Generator().manual_seed(SEED)
cases = [((1, 1, 2, 9), False), ((1, 2, 5, 17), False), ((2, 1, 3, 31), False), ((1, 1, 9, 100), False),
         ((3, 2, 4, 7), False), ((2, 5, 4, 5), True), ((1, 3, 3, 3), True), ((2, 12, 5, 3), True)]
for shape, channels_last in cases:
    n = shape[0] * shape[1] * shape[2] * shape[3]
    flat = torch.frombuffer((ctypes.c_float * n).from_address(base + page - 4 * n), dtype=torch.float32)
    N, C, H, W = shape
    x = flat.view(N, H, W, C).permute(0, 3, 1, 2) if channels_last else flat.view(shape)
    x.copy_(torch.randn(shape, generator=g))
    for k in (2, 3):
        for p in (0, 1):
            for ceil in (True, False):
                if shape[2] + 2 * p >= k and shape[3] + 2 * p >= k:
                    want = F.max_pool2d(x.clone(), k, 2, p, ceil_mode=ceil)
                    assert torch.equal(ops.max_pool2d(x, k, 2, p, ceil), want), (shape, channels_last, k, p, ceil)
print("ok")
"""


@pytest.mark.parametrize("capability", ["native", "default"])
def test_float32_kernels_read_only_inside_x(capability):
    if capability == "default" and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("CPU has no vector ISA to disable")
    env = dict(os.environ)
    if capability == "default":
        env["ATEN_CPU_CAPABILITY"] = "default"
    script = GUARD_PAGE_SCRIPT.replace("SEED", str(new_seed()))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-3000:])


BAD_ARGS = [
    # (x, kernel_size, stride, padding, ceil_mode), exception, message fragment
    ((torch.randn(2, 3, 5, 5, dtype=torch.float64).int(), 2, 2, 0, False), TypeError,
     "x must be float32, float64, float16 or bfloat16, got torch.int32"),
    ((torch.randn(3, 5), 2, 2, 0, False), ValueError,
     "x must have shape [N, C, H, W] or [C, H, W] (rank 4 or 3), got shape [3, 5]"),
    ((torch.randn(2, 0, 5, 5), 2, 2, 0, False), ValueError, "x must have C, H and W >= 1, got shape [2, 0, 5, 5]"),
    ((torch.randn(2, 3, 5, 5), 0, 1, 0, False), ValueError, "kernel_size must be >= 1, got [0, 0]"),
    ((torch.randn(2, 3, 5, 5), 2, (1, 0), 0, False), ValueError, "stride must be >= 1, got [1, 0]"),
    ((torch.randn(2, 3, 5, 5), 2, 2, 2, False), ValueError,
     "padding must be >= 0 and at most half of kernel_size [2, 2], got [2, 2]"),
    ((torch.randn(2, 3, 5, 5), 3, 2, -1, False), ValueError,
     "padding must be >= 0 and at most half of kernel_size [3, 3], got [-1, -1]"),
    ((torch.randn(2, 3, 5, 4), (3, 7), 1, (0, 1), False), ValueError,
     "x's height and width [5, 4] plus twice padding [0, 1] must be at least kernel_size [3, 7]"),
]


@pytest.mark.parametrize("args,exc,message", BAD_ARGS, ids=[m for _, _, m in BAD_ARGS])
def test_bad_arguments(args, exc, message):
    """The same exception type and message from the wrapper, the C++ op and the fake (meta) kernel."""
    x, k, s, p, ceil = args
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    with pytest.raises(exc) as wrapper:
        ops.max_pool2d(x, k, s, p, ceil)
    with pytest.raises(exc) as op:
        torch.ops.eexit.max_pool2d(x, pair(k), pair(s), pair(p), ceil)
    with pytest.raises(exc) as fake:
        torch.ops.eexit.max_pool2d(x.to("meta"), pair(k), pair(s), pair(p), ceil)
    for err in (wrapper, op, fake):
        assert f"max_pool2d: {message}" in str(err.value), (str(err.value), message)


def test_bad_argument_types():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(TypeError, match="max_pool2d: kernel_size must be an int or a pair of ints, got 2.0"):
        ops.max_pool2d(x, 2.0)
    with pytest.raises(ValueError, match=r"max_pool2d: stride must be an int or a pair of ints, got \[1, 2, 3\]"):
        ops.max_pool2d(x, 2, (1, 2, 3))
    with pytest.raises(ValueError, match=r"max_pool2d: padding must be an int or a pair of ints, got \[1, 2, 3\]"):
        torch.ops.eexit.max_pool2d(x, [2, 2], [2, 2], [1, 2, 3], False)
    with pytest.raises(TypeError, match="max_pool2d: ceil_mode must be a bool, got int"):
        ops.max_pool2d(x, 2, ceil_mode=1)
    with pytest.raises(TypeError, match="max_pool2d: x must be a torch.Tensor, got list"):
        ops.max_pool2d([[1.0]], 2)


def test_refuses_grad():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only.*torch.nn.functional.max_pool2d"):
        ops.max_pool2d(x, 2)
    with torch.no_grad():
        assert not ops.max_pool2d(x, 2).requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = generator(new_seed())
    x = torch.randn(3, 5, 9, 8, generator=gen).to(device)
    for xf, (k, s, p, ceil) in itertools.product(
            (x, x.contiguous(memory_format=torch.channels_last), x[:, 1::2], x[0]), GEOMETRIES[:6]):
        k, s, p = ([v, v] if isinstance(v, int) else list(v) for v in (k, s, p))
        torch.library.opcheck(torch.ops.eexit.max_pool2d.default, (xf, k, s, p, ceil))


def pool_relu(x):
    return ops.max_pool2d(x, 3, 2, 1, True).relu() + ops.max_pool2d(x, 3, 2, 1, True)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(pool_relu, fullgraph=True, dynamic=dynamic)
    gen = generator(seed := new_seed())
    for n in (4, 7):
        x = torch.randn(n, 3, 11, 10, generator=gen)
        got, want = compiled(x), pool_relu(x)
        assert torch.equal(got, want), f"seed={seed} n={n}"
