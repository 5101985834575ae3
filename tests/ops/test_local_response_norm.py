"""eexit.ops.local_response_norm against torch.nn.functional.local_response_norm in float64:
random geometries (odd channel counts, even and odd window sizes, windows wider than C), both
memory formats, any strides, the beta = 0.75 fast path and the general power, empty batches,
NaN/inf; rank 4 only; its argument checks (Python, fake and C++ alike), opcheck and torch.compile;
and eexit.nn.LocalResponseNorm, whose inference path runs it."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eexit import ops
from eexit.nn import LocalResponseNorm

from helpers import DTYPES, LRN_TOL, generator, new_seed

FORMATS = [torch.contiguous_format, torch.channels_last]


def check_close(x, size, alpha, beta, k, msg=""):
    """The op's output within LRN_TOL of float64 PyTorch, in x's dtype and (contiguous or
    channels_last) memory format. Returns it."""
    got = ops.local_response_norm(x, size, alpha, beta, k)
    want = F.local_response_norm(x.double(), size, alpha, beta, k)
    assert got.shape == x.shape and got.dtype == x.dtype, msg
    torch.testing.assert_close(got.double(), want, **LRN_TOL[x.dtype], msg=lambda m: f"{msg}: {m}")
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert got.is_contiguous(memory_format=torch.channels_last), msg
    else:
        assert got.is_contiguous(), msg
    return got


def random_case(r: random.Random):
    """(shape, size, alpha, beta, k): C 1-70 (vector remainders, windows wider than C)."""
    shape = (r.randint(1, 4), r.randint(1, 70), r.randint(1, 13), r.randint(1, 13))
    return shape, r.randint(1, 7), r.uniform(1e-5, 0.5), r.choice([0.75, 0.5, r.uniform(0.1, 1.5)]), r.uniform(0.5, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_matches_torch_random_geometries(dtype, fmt):
    seed = new_seed()
    gen, r = generator(seed), random.Random(seed)
    for _ in range(12):
        shape, size, alpha, beta, k = random_case(r)
        x = (torch.randn(shape, generator=gen) * 3).to(dtype).contiguous(memory_format=fmt)
        check_close(x, size, alpha, beta, k, f"seed={seed} {shape} size={size} beta={beta}")


@pytest.mark.parametrize("layout", ["sliced", "permuted", "expanded"])
def test_any_strides(layout):
    seed = new_seed()
    gen = generator(seed)
    base = torch.randn(3, 12, 9, 11, generator=gen)
    x = {"sliced": base[:, 1:-2, ::2, 1:], "permuted": base.permute(0, 1, 3, 2),
         "expanded": base[:1].expand(4, -1, -1, -1)}[layout]
    check_close(x, 5, 1e-2, 0.75, 2.0, f"seed={seed} {layout}")


@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_empty_batch(fmt):
    empty = torch.randn(0, 5, 4, 4).contiguous(memory_format=fmt)
    assert ops.local_response_norm(empty, 3).shape == (0, 5, 4, 4)


def test_large_batch_uses_threads_and_matches():
    seed = new_seed()
    for fmt in FORMATS:
        x = torch.randn(257, 33, 15, 15, generator=generator(seed)).contiguous(memory_format=fmt)
        check_close(x, 3, 1.5e-4, 0.75, 2.0, f"seed={seed} {fmt}")


def test_nan_and_infinity_propagate_like_torch():
    """A NaN spreads to its window's outputs; an inf element gives NaN, its neighbours 0 (finite / inf)."""
    for fmt in FORMATS:
        x = torch.randn(2, 9, 4, 5, generator=generator(new_seed())).contiguous(memory_format=fmt)
        x[0, 2, 1, 1] = float("nan")
        x[1, 4, 2, 3] = float("inf")
        x[1, 0, 0, 0] = -float("inf")
        got = ops.local_response_norm(x, 3, 1e-2, 0.75, 2.0)
        want = F.local_response_norm(x, 3, 1e-2, 0.75, 2.0)
        assert torch.equal(got.isnan(), want.isnan()) and got.isnan().sum() == want.isnan().sum() > 3
        finite = want.isfinite()
        torch.testing.assert_close(got[finite], want[finite], **LRN_TOL[torch.float32])


X = torch.randn(2, 6, 5, 5)


@pytest.mark.parametrize("args,exc,message", [
    ((X[0, 0], 3), ValueError, r"local_response_norm: x must have shape \[N, C, H, W\] \(rank 4\), got shape \[5, 5\]"),
    ((X[0], 3), ValueError, r"local_response_norm: x must have shape \[N, C, H, W\] \(rank 4\), got shape \[6, 5, 5\]"),
    ((X.double(), 3), TypeError, "local_response_norm: x must be float32, float16 or bfloat16, got torch.float64"),
    ((X[:, :0], 3), ValueError, "local_response_norm: x must have C, H and W >= 1"),
    ((X, 0), ValueError, "local_response_norm: size must be an int >= 1, got 0"),
])
def test_bad_arguments(args, exc, message):
    """The wrapper, the C++ op and the fake implementation raise the same error."""
    x, size = args
    with pytest.raises(exc, match=message):
        ops.local_response_norm(x, size)
    with pytest.raises(exc, match=message):
        torch.ops.eexit.local_response_norm.default(x, size, 1e-4, 0.75, 1.0)
    with pytest.raises(exc, match=message), torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        torch.ops.eexit.local_response_norm.default(mode.from_tensor(x), size, 1e-4, 0.75, 1.0)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="local_response_norm: x must be a torch.Tensor, got list"):
        ops.local_response_norm([[1.0]], 3)
    with pytest.raises(ValueError, match="local_response_norm: size must be an int >= 1, got 2.5"):
        ops.local_response_norm(X, 2.5)
    with pytest.raises(ValueError, match="local_response_norm: size must be an int >= 1, got True"):
        ops.local_response_norm(X, True)
    for name in ("alpha", "beta", "k"):
        with pytest.raises(TypeError, match=f"local_response_norm: {name} must be a real number, got str"):
            ops.local_response_norm(X, 3, **{name: "1"})


def test_other_devices_run_torch():
    """Off the CPU the op is F.local_response_norm after the same checks (here on the meta device)."""
    assert ops.local_response_norm(X.to("meta"), 3).shape == X.shape
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        ops.local_response_norm(X.to("meta"), 0)


def test_refuses_grad():
    x = X.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only.*torch.nn.functional.local_response_norm"):
        ops.local_response_norm(x, 3)
    with torch.no_grad():
        assert not ops.local_response_norm(x, 3).requires_grad


@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_opcheck(fmt):
    x = torch.randn(3, 7, 5, 6, generator=generator(new_seed())).contiguous(memory_format=fmt)
    torch.library.opcheck(torch.ops.eexit.local_response_norm.default, (x, 3, 1e-3, 0.75, 2.0))
    torch.library.opcheck(torch.ops.eexit.local_response_norm.default, (x, 4, 1e-1, 0.6, 1.0))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    gen = generator(new_seed())

    def relu_lrn(x):
        return ops.local_response_norm(torch.relu(x), 3, 1.5e-4, 0.75, 2.0)

    compiled = torch.compile(relu_lrn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    with torch.no_grad():
        for n in (3, 5):
            x = torch.randn(n, 8, 6, 6, generator=gen)
            torch.testing.assert_close(compiled(x), relu_lrn(x))


# ----------------------------------------------------------------------- eexit.nn.LocalResponseNorm

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
def test_module_paths_match_torch(size, fmt):
    """Both paths equal nn.LocalResponseNorm (even windows too); the reference path's gradient
    too; the inference path keeps the memory format."""
    seed = new_seed()
    x = torch.randn(4, 7, 6, 5, generator=generator(seed)).contiguous(memory_format=fmt)
    ours, theirs = LocalResponseNorm(size, 0.3, 0.75, 1.5), nn.LocalResponseNorm(size, 0.3, 0.75, 1.5)
    want = theirs(x)
    with torch.no_grad():
        fused = ours.eval()(x)
    assert fused.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(fused, want.detach(), **LRN_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")
    xr = x.clone().requires_grad_()
    got = ours.train()(xr)
    torch.testing.assert_close(got, want, msg=lambda m: f"seed={seed} {m}")
    g = torch.randn(got.shape, generator=generator(seed))
    xt = x.clone().requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(got, xr, g)[0], torch.autograd.grad(theirs(xt), xt, g)[0],
                               msg=lambda m: f"seed={seed} {m}")
    assert ours.set_backend("reference").eval()(x).requires_grad is False
    assert repr(ours) == f"LocalResponseNorm({size}, alpha=0.3, beta=0.75, k=1.5, compute_path='reference')"


def test_module_off_the_cpu_runs_the_slices(monkeypatch):
    """The op is a CPU kernel: elsewhere the module's inference path is the slices (here on meta)."""
    monkeypatch.setattr(ops, "local_response_norm", lambda *a, **k: pytest.fail("op called off the CPU"))
    with torch.no_grad():
        assert LocalResponseNorm(3).eval()(X.to("meta")).shape == X.shape
    with pytest.raises(RuntimeError, match="inference-only"):  # as on the CPU: a fused path does not train
        LocalResponseNorm(3, backend="fused").train()(X.to("meta"))
