"""eexit.ops.direct_conv2d against torch.nn.functional.conv2d (a float64 reference, errors bounded
by a multiple of F.conv2d's own in the same dtype): every register-tile remainder (C_out and the
row's vector chunks), odd sizes, asymmetric padding, rectangular kernels, any strides, memory
formats, empty batches, NaN/inf; its argument checks (Python, fake and C++ alike), opcheck and
torch.compile; and eexit.nn.Conv2d, which picks it by a measured rule."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eexit
from eexit import ops
from eexit.nn.direct_conv import DIRECT_MAX_TAPS, direct_conv_pays

from helpers import DTYPES, assert_within_torch_error, generator, new_seed

FORMATS = [torch.contiguous_format, torch.channels_last]


def check_close(x, weight, bias, padding, msg=""):
    """direct_conv2d's error against float64 at most CONV_ERROR_FACTOR x F.conv2d's (same dtype)
    plus CONV_ATOL; same shape, dtype and memory format as F.conv2d's output for contiguous or
    channels_last x. Returns the output."""
    got = ops.direct_conv2d(x, weight, bias, padding)
    want = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=padding)
    assert got.shape == want.shape and got.dtype == x.dtype, (msg, got.shape, want.shape, got.dtype)
    if want.numel():
        assert_within_torch_error(got, F.conv2d(x, weight, bias, padding=padding), want, x.dtype, msg)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert got.is_contiguous(memory_format=torch.channels_last), msg
    else:
        assert got.is_contiguous(), msg
    return got


def random_case(gen, dtype, fmt, n=None):
    """A random geometry: C_out 1-13 (every tile remainder), widths giving 1-6 vector chunks."""
    r = random.Random(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
    c_in, c_out = r.randint(1, 6), r.randint(1, 13)
    kh, kw = r.choice([1, 2, 3, 5]), r.choice([1, 3, 4, 5])
    ph, pw = r.randint(0, 3), r.randint(0, 3)
    h = r.randint(max(1, kh - 2 * ph), 19)
    w = r.randint(max(1, kw - 2 * pw), 47)
    n = r.randint(0, 5) if n is None else n
    x = torch.randn(n, c_in, h, w, generator=gen).to(dtype).contiguous(memory_format=fmt)
    weight = torch.randn(c_out, c_in, kh, kw, generator=gen).to(dtype)
    bias = torch.randn(c_out, generator=gen).to(dtype) if r.random() < 0.8 else None
    return x, weight, bias, (ph, pw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_matches_torch_random_geometries(dtype, fmt):
    seed = new_seed()
    gen = generator(seed)
    for i in range(12):
        x, weight, bias, padding = random_case(gen, dtype, fmt)
        check_close(x, weight, bias, padding, f"seed {seed} case {i}: {list(x.shape)} {list(weight.shape)} {padding}")


@pytest.mark.parametrize("c_out", range(1, 14))
def test_every_channel_remainder_and_width(c_out):
    """Every C_out against every row width from 1 to 4 chunks and one lane more (W_out 1..33)."""
    gen = generator(new_seed())
    weight, bias = torch.randn(c_out, 2, 3, 3, generator=gen), torch.randn(c_out, generator=gen)
    for w_out in (1, 5, 8, 9, 15, 16, 17, 24, 25, 31, 32, 33):
        check_close(torch.randn(2, 2, 4, w_out, generator=gen), weight, bias, 1, f"C_out {c_out} W_out {w_out}")


@pytest.mark.parametrize("n", [1, 3, 64])
def test_lenet_layers(n):
    """B-LeNet's layers (1->5 5x5 pad 3 at 28 px, 5->10 3x3 pad 1 at 15 px, 10->20 5x5 pad 3 at
    9 px): the work is cut into row blocks per image at small n."""
    gen = generator(new_seed())
    for c_in, c_out, k, hw, p in [(1, 5, 5, 28, 3), (5, 10, 3, 15, 1), (5, 10, 5, 15, 3), (10, 20, 5, 9, 3)]:
        x = torch.randn(n, c_in, hw, hw, generator=gen)
        check_close(x, torch.randn(c_out, c_in, k, k, generator=gen), torch.randn(c_out, generator=gen), p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_strides(dtype):
    """Sliced, permuted and expanded inputs; a non-contiguous weight."""
    gen = generator(new_seed())
    base = torch.randn(4, 6, 13, 22, generator=gen).to(dtype)
    weight = torch.randn(3, 7, 5, 3, generator=gen).to(dtype).transpose(2, 3)  # [3, 7, 3, 5], strided
    bias = torch.randn(7, generator=gen).to(dtype)[::2][:3]
    for x in (base[:, 1:, ::2, 1::3], base.permute(0, 1, 3, 2)[:, :3], base[:1, :3].expand(3, 3, 13, 22)):
        check_close(x[:, :3], weight[:, :3], bias, (2, 1))


@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_empty_batch_and_rank_3(fmt):
    gen = generator(new_seed())
    weight, bias = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, generator=gen)
    x = torch.randn(0, 3, 7, 9).contiguous(memory_format=fmt)
    assert ops.direct_conv2d(x, weight, bias, 1).shape == (0, 4, 7, 9)
    x3 = torch.randn(3, 7, 9, generator=gen)
    got = check_close(x3, weight, bias, (0, 2))
    assert got.shape == (4, 5, 11)


def test_nan_and_infinity_propagate_like_torch():
    """A NaN or an infinity reaches exactly the outputs whose windows hold it (inf - inf: NaN)."""
    gen = generator(new_seed())
    x = torch.randn(2, 2, 9, 12, generator=gen)
    x[0, 0, 3, 4] = float("nan")
    x[1, 1, 6, 2] = float("inf")
    x[1, 0, 6, 3] = float("-inf")
    weight, bias = torch.rand(3, 2, 3, 3, generator=gen) + 0.1, torch.randn(3, generator=gen)
    got, want = ops.direct_conv2d(x, weight, bias, 1), F.conv2d(x, weight, bias, padding=1)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[got.isinf()], want[want.isinf()])
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], atol=1e-5, rtol=1e-5)


def test_large_batch_uses_threads_and_matches():
    gen = generator(new_seed())
    x = torch.randn(257, 1, 28, 28, generator=gen)
    check_close(x, torch.randn(5, 1, 5, 5, generator=gen), torch.randn(5, generator=gen), 3)


X, W, B = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)


@pytest.mark.parametrize("args,exc,message", [
    ((X[0, 0], W, B, 1), ValueError, r"x must have shape \[N, C_in, H, W\] or \[C_in, H, W\]"),
    ((X.double(), W.double(), None, 1), TypeError, "x must be float32, float16 or bfloat16"),
    ((X[:, :0], W[:, :0], B, 1), ValueError, "x must have C_in, H and W >= 1"),
    ((X, W[0], B, 1), ValueError, r"weight must have shape \[C_out, C_in, KH, KW\] \(rank 4\)"),
    ((X, W[:, :2], B, 1), ValueError, r"weight must have shape \[C_out, 3, KH, KW\].*x has 3 channels"),
    ((X, W.half(), B, 1), TypeError, "weight must have x's dtype"),
    ((X, W, B[:3], 1), ValueError, r"bias must have shape \[4\] \(C_out\)"),
    ((X, W, B.half(), 1), TypeError, "bias must have x's dtype"),
    ((X, W, B, (1, -1)), ValueError, "padding must be a pair of ints >= 0"),
    ((X[:, :, :2, :2], torch.randn(4, 3, 5, 5), B, 1), ValueError,
     r"height and width \[2, 2\] plus twice padding \[1, 1\] must be at least the kernel \[5, 5\]"),
])
def test_bad_arguments(args, exc, message):
    """The wrapper, the C++ op and the fake implementation raise the same error."""
    x, weight, bias, padding = args
    with pytest.raises(exc, match=message):
        ops.direct_conv2d(*args)
    pair = [padding, padding] if isinstance(padding, int) else list(padding)
    with pytest.raises(exc, match=message):
        torch.ops.eexit.direct_conv2d.default(x, weight, bias, pair)
    with pytest.raises(exc, match=message), torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        torch.ops.eexit.direct_conv2d.default(*[mode.from_tensor(t) if isinstance(t, torch.Tensor) else t
                                                for t in (x, weight, bias)], pair)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="direct_conv2d: padding must be an int or a pair of ints, got 'same'"):
        ops.direct_conv2d(X, W, B, "same")
    with pytest.raises(ValueError, match="direct_conv2d: padding must be an int or a pair of ints, got \\[1, 1, 1\\]"):
        ops.direct_conv2d(X, W, B, (1, 1, 1))
    with pytest.raises(TypeError, match="direct_conv2d: x must be a torch.Tensor, got list"):
        ops.direct_conv2d([[1.0]], W, B, 1)
    with pytest.raises(TypeError, match="direct_conv2d: bias must be a torch.Tensor, got float"):
        ops.direct_conv2d(X, W, 1.0, 1)


def test_weight_on_another_device_is_named():
    with pytest.raises(ValueError, match="direct_conv2d: weight must be on x's device cpu, got meta"):
        ops.direct_conv2d(X, W.to("meta"), None, 1)


def test_other_devices_run_torch():
    """Off the CPU the op is F.conv2d after the same checks (here on the meta device)."""
    x, w = X.to("meta"), W.to("meta")
    assert ops.direct_conv2d(x, w, B.to("meta"), 1).shape == (2, 4, 8, 8)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        ops.direct_conv2d(x, w.half(), None, 1)


def test_refuses_grad():
    w = W.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only.*torch.nn.functional.conv2d"):
        ops.direct_conv2d(X, w, B, 1)
    with torch.no_grad():
        assert not ops.direct_conv2d(X, w, B, 1).requires_grad


@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_opcheck(fmt):
    gen = generator(new_seed())
    x = torch.randn(3, 2, 7, 10, generator=gen).contiguous(memory_format=fmt)
    for bias in (torch.randn(5, generator=gen), None):
        torch.library.opcheck(torch.ops.eexit.direct_conv2d.default,
                              (x, torch.randn(5, 2, 3, 2, generator=gen), bias, [1, 0]))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    gen = generator(new_seed())
    weight, bias = torch.randn(5, 1, 5, 5, generator=gen), torch.randn(5, generator=gen)

    def conv_relu(x):
        return torch.relu(ops.direct_conv2d(x, weight, bias, 3))

    compiled = torch.compile(conv_relu, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    with torch.no_grad():
        for n in (3, 5):
            x = torch.randn(n, 1, 28, 28, generator=gen)
            torch.testing.assert_close(compiled(x), conv_relu(x))


# ----------------------------------------------------------------------------- eexit.nn.Conv2d

def test_conv2d_module_is_nn_conv2d():
    """Same parameters and state_dict as nn.Conv2d (either loads the other's)."""
    torch.manual_seed(new_seed())
    ours, theirs = eexit.nn.Conv2d(3, 4, 5, padding=2), nn.Conv2d(3, 4, 5, padding=2)
    assert isinstance(ours, nn.Conv2d) and ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert "compute_path='auto'" in repr(ours) and "padding=(2, 2)" in repr(ours)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [
    dict(in_channels=1, out_channels=5, kernel_size=5, padding=3),             # direct at any batch
    dict(in_channels=16, out_channels=32, kernel_size=3, padding=1),           # direct at batch 1 only
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),   # stride 2: F.conv2d
    dict(in_channels=4, out_channels=6, kernel_size=3, padding="same"),        # padding "same": F.conv2d
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
], ids=["lenet", "wide", "stride2", "same", "reflect"])
def test_conv2d_module_matches_reference(dtype, geometry):
    """Inference (fused) vs the reference path (F.conv2d) at batch 1 and 64, and training through it."""
    torch.manual_seed(new_seed())
    conv = eexit.nn.Conv2d(**geometry).to(dtype).eval()
    ref = copy.deepcopy(conv).set_backend("reference")
    for n in (1, 64):
        x = torch.randn(n, geometry["in_channels"], 14, 15).to(dtype)
        with torch.inference_mode():
            got, want = conv(x), ref(x)
        exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), conv.stride,
                         conv.padding if geometry.get("padding_mode", "zeros") == "zeros" else 0)
        if geometry.get("padding_mode", "zeros") == "zeros":
            assert_within_torch_error(got, want, exact, dtype, f"n={n}")
        else:
            assert torch.equal(got, want)
    conv.train()
    x = torch.randn(2, geometry["in_channels"], 14, 15).to(dtype)
    conv(x).sum().backward()  # the reference path: autograd through F.conv2d
    assert conv.weight.grad is not None


def test_direct_conv_pays_rule():
    """The documented rule: few taps at any batch; other layers only while the call is small."""
    lenet, wide = nn.Conv2d(1, 5, 5, padding=3), nn.Conv2d(64, 64, 3, padding=1)
    assert 1 * 5 * 5 <= DIRECT_MAX_TAPS
    assert direct_conv_pays(torch.randn(256, 1, 28, 28), lenet)
    assert direct_conv_pays(torch.randn(1, 64, 8, 8), wide)  # 64 x 64 x 9 x 64 = 2.4 M MACs
    assert not direct_conv_pays(torch.randn(16, 64, 8, 8), wide)
    assert direct_conv_pays(torch.randn(1, 64, 8, 8).contiguous(memory_format=torch.channels_last),
                            nn.Conv2d(64, 96, 3, padding=1))  # 3.5 M
    assert not direct_conv_pays(torch.randn(2, 64, 8, 8), nn.Conv2d(64, 96, 3, padding=1))  # 7.1 M
    assert not direct_conv_pays(torch.randn(1, 1, 28, 28, dtype=torch.float64), lenet.double())
    assert not direct_conv_pays(torch.randn(1, 1, 28, 28, device="meta"), lenet.to("meta"))
    assert not direct_conv_pays(torch.randn(1, 1, 28, 28), nn.Conv2d(1, 5, 5, stride=2))
    assert not direct_conv_pays(torch.randn(1, 1, 28, 28), nn.Conv2d(1, 5, 5, dilation=2))
    # rows narrower than DIRECT_MIN_WIDTH (NCHW) / DIRECT_MIN_WIDTH_PACKED (packed channels_last) go to oneDNN
    cl = torch.channels_last
    assert not direct_conv_pays(torch.randn(1, 512, 1, 1), nn.Conv2d(512, 512, 3, padding=1))  # 2.4 M, 1 column
    assert direct_conv_pays(torch.randn(1, 256, 2, 2), nn.Conv2d(256, 256, 3, padding=1))  # 2.4 M, 2 columns
    assert direct_conv_pays(torch.randn(1, 128, 4, 4), nn.Conv2d(128, 128, 3, padding=1))
    assert direct_conv_pays(torch.randn(1, 128, 4, 4).to(torch.bfloat16).contiguous(memory_format=cl),
                            nn.Conv2d(128, 128, 3, padding=1).bfloat16())  # not packed: NCHW's width rule
    assert not direct_conv_pays(torch.randn(1, 128, 4, 4).contiguous(memory_format=cl),
                                nn.Conv2d(128, 128, 3, padding=1))  # packed


def test_conv2d_module_under_autocast():
    """Under CPU autocast (bfloat16) the direct path computes in bfloat16, as F.conv2d does there."""
    torch.manual_seed(new_seed())
    conv = eexit.nn.Conv2d(1, 5, 5, padding=3).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        want = copy.deepcopy(conv).set_backend("reference")(x)
    assert got.dtype == want.dtype == torch.bfloat16
    low = [t.detach().bfloat16().double() for t in (x, conv.weight, conv.bias)]
    exact = F.conv2d(low[0], low[1], low[2], padding=3)
    assert_within_torch_error(got, want, exact, torch.bfloat16)
