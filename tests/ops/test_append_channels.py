"""eexit.ops.append_channels against eexit.reference.append_channels: the window of buf gets
src exactly, nothing else in buf's or pre's storage is touched (guards around windows
included), and pre is the folded BN-ReLU of everything so far; channels_last, contiguous and
windowed tensors, fp32/fp16/bf16, odd sizes, an empty batch, non-finite values, bad input."""
import pytest
import torch

from eexit import ops, reference

from helpers import DEVICES, DTYPES, PREACT_TOL, generator, new_seed

POISON = 1234.5  # exactly representable in every dtype under test
CL = torch.channels_last


def laid_out(t, kind):
    """t as 'cl' (channels_last), 'contig', or 'window': channels [3, 3 + C) of a wider
    channels_last tensor whose other channels are POISON."""
    if kind == "cl":
        return t.contiguous(memory_format=CL)
    if kind == "contig":
        return t.contiguous()
    n, c, h, w = t.shape
    wide = torch.full((n, c + 6, h, w), POISON, dtype=t.dtype, device=t.device).contiguous(memory_format=CL)
    wide[:, 3: 3 + c] = t
    return wide[:, 3: 3 + c]


def make_case(gen, shape, dtype, device, kinds):
    """(buf, src, pre, scale, shift); buf's channels [0, c0) random, the rest POISON."""
    n, c_buf, c0, c_src, h, w = shape
    buf = torch.full((n, c_buf, h, w), POISON)
    buf[:, :c0] = torch.randn(n, c0, h, w, generator=gen) * 2
    src = torch.randn(n, c_src, h, w, generator=gen) * 2
    pre = torch.full((n, c0 + c_src, h, w), POISON)
    scale = torch.randn(c0 + c_src, generator=gen) + 0.5
    shift = torch.randn(c0 + c_src, generator=gen) * 0.5
    buf, src, pre = (laid_out(t.to(dtype=dtype, device=device), k) for t, k in zip((buf, src, pre), kinds))
    return buf, src, pre, scale.to(device), shift.to(device)


def storage_of(t):
    """A flat copy of everything t's storage holds."""
    flat = torch.empty(0, dtype=t.dtype, device=t.device)
    return flat.set_(t.untyped_storage()).clone()


def assert_rest_unchanged(t, before, msg):
    """Every element of t's storage that is not an element of t equals ``before``."""
    after = storage_of(t)
    own = torch.arange(after.numel(), device=t.device).as_strided(t.shape, t.stride(), t.storage_offset())
    other = torch.ones(after.numel(), dtype=torch.bool, device=t.device)
    other[own.flatten()] = False
    assert torch.equal(after[other], before[other]), msg


SHAPES = [  # n, c_buf, c0, c_src, h, w: vector lanes of 8 and 16 crossed, odd sizes, empty batch
    (3, 23, 9, 5, 5, 7),
    (1, 40, 0, 17, 1, 1),
    (2, 33, 31, 2, 3, 4),
    (0, 12, 4, 8, 5, 5),
    (4, 70, 37, 24, 9, 33),  # enough pixel rows to be split across threads
]
KINDS = [("cl", "cl", "cl"), ("contig", "contig", "contig"), ("window", "cl", "window"),
         ("cl", "contig", "cl"), ("window", "window", "cl")]  # (buf, src, pre)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kinds", KINDS, ids=["-".join(k) for k in KINDS])
@pytest.mark.parametrize("with_pre", [True, False], ids=["pre", "copy-only"])
def test_matches_reference(device, dtype, kinds, with_pre):
    seed = new_seed()
    gen = generator(seed)
    for shape in SHAPES:
        buf, src, pre, scale, shift = make_case(gen, shape, dtype, device, kinds)
        extra = (pre, scale, shift) if with_pre else ()
        want_buf, want_pre = buf.clone(), pre.clone()
        reference.append_channels(want_buf, src, shape[2], *((want_pre, scale, shift) if with_pre else ()))
        buf_before, pre_before = storage_of(buf), storage_of(pre)
        ops.append_channels(buf, src, shape[2], *extra)
        msg = f"seed={seed} shape={shape}"
        assert torch.equal(buf, want_buf), msg  # the window holds src exactly, buf's other channels kept
        assert_rest_unchanged(buf, buf_before, msg)
        if with_pre:
            torch.testing.assert_close(pre, want_pre, **PREACT_TOL[dtype], msg=msg)
            assert_rest_unchanged(pre, pre_before, msg)
        else:
            assert torch.equal(storage_of(pre), pre_before), msg


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["cl", "contig"])
def test_non_finite(device, fmt):
    """relu(NaN) = NaN, relu(+inf * s + b) = +inf for s > 0, relu(-inf * s + b) = 0, as torch.relu."""
    n, c0, h, w = 2, 11, 3, 3
    buf = laid_out(torch.zeros(n, c0 + 2, h, w, device=device), fmt)
    buf[:, 0, 0, 0] = float("nan")
    buf[:, 1, 1, 1] = float("inf")
    buf[:, 2, 2, 2] = -float("inf")
    src = torch.full((n, 2, h, w), float("nan"), device=device)
    scale = torch.ones(c0 + 2, device=device)
    shift = torch.full((c0 + 2,), 0.25, device=device)
    pre = laid_out(torch.zeros(n, c0 + 2, h, w, device=device), fmt)
    want = buf.clone()
    want_pre = pre.clone()
    reference.append_channels(want, src, c0, want_pre, scale, shift)
    ops.append_channels(buf, src, c0, pre, scale, shift)
    assert torch.equal(buf.isnan(), want.isnan())
    torch.testing.assert_close(pre, want_pre, equal_nan=True)
    assert pre[:, 0, 0, 0].isnan().all() and pre[:, c0:].isnan().all()
    assert (pre[:, 1, 1, 1] == float("inf")).all() and (pre[:, 2, 2, 2] == 0).all()
    assert (pre[:, 3] == 0.25).all()


def bad_cases():
    buf = torch.zeros(2, 10, 3, 3).contiguous(memory_format=CL)
    src = torch.zeros(2, 4, 3, 3)
    pre = torch.zeros(2, 8, 3, 3)
    s = torch.ones(8)
    shared = torch.zeros(2, 12, 3, 3)
    return [
        ("buf rank", (torch.zeros(2, 10, 3), src, 4), ValueError, "buf must have shape"),
        ("buf dtype", (buf.double(), src, 4), TypeError, "buf must be float32"),
        ("src rank", (buf, torch.zeros(2, 4, 3), 4), ValueError, "src must have shape"),
        ("src dtype", (buf, src.half(), 4), TypeError, "src must have buf's dtype"),
        ("src sizes", (buf, torch.zeros(2, 4, 3, 2), 4), ValueError, "batch and spatial sizes"),
        ("window past end", (buf, src, 7), ValueError, "must lie within buf's 10 channels"),
        ("negative c0", (buf, src, -1), ValueError, "must lie within"),
        ("src aliases buf", (buf, buf[:, :4], 4), ValueError, "src must not share memory with buf"),
        ("expanded buf", (torch.zeros(1, 10, 3, 3).expand(2, 10, 3, 3), src, 4), ValueError, "overlapping"),
        ("pre without scale", (buf, src, 4, pre), ValueError, "given together"),
        ("pre channels", (buf, src, 4, torch.zeros(2, 7, 3, 3), torch.ones(7), torch.ones(7)), ValueError,
         "pre must have shape [2, 8, 3, 3]"),
        ("pre dtype", (buf, src, 4, pre.half(), s, s), TypeError, "pre must have buf's dtype"),
        ("expanded pre", (buf, src, 4, torch.zeros(1, 8, 3, 3).expand(2, 8, 3, 3), s, s), ValueError,
         "overlapping"),
        ("pre aliases buf", (buf, src, 4, buf[:, 2:], s, s), ValueError, "pre must not share memory"),
        ("pre aliases src", (buf, shared[:, :4], 4, shared[:, 4:], s, s), ValueError,
         "pre must not share memory"),
        ("scale dtype", (buf, src, 4, pre, s.double(), s), TypeError, "scale must be float32"),
        ("shift length", (buf, src, 4, pre, s, torch.ones(9)), ValueError, "shift must have shape [8]"),
    ]


BAD = bad_cases()


@pytest.mark.parametrize("impl", [ops.append_channels, reference.append_channels], ids=["op", "reference"])
@pytest.mark.parametrize("name,args,exc,match", BAD, ids=[c[0] for c in BAD])
def test_bad_input(impl, name, args, exc, match):
    buf_before = args[0].clone()
    with pytest.raises(exc, match=match.replace("[", r"\[").replace("]", r"\]")):
        impl(*args)
    assert torch.equal(args[0], buf_before)  # a refused call writes nothing


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = generator(new_seed())
    for shape, kinds in [((3, 23, 9, 5, 5, 7), ("cl", "cl", "cl")), ((2, 12, 0, 12, 3, 3), ("contig",) * 3),
                         ((0, 12, 4, 8, 5, 5), ("cl", "cl", "cl"))]:
        buf, src, pre, scale, shift = make_case(gen, shape, torch.float32, device, kinds)
        torch.library.opcheck(torch.ops.eexit.append_channels.default, (buf, src, shape[2], pre, scale, shift))
        torch.library.opcheck(torch.ops.eexit.append_channels.default, (buf, src, shape[2]))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    """A dense-block step under torch.compile: allocate, append with pre-activation, append again."""
    torch._dynamo.reset()
    gen = generator(new_seed())

    def step(x, new, scale, shift):
        n, c0, h, w = x.shape
        buf = torch.empty((n, c0 + 2 * new.shape[1], h, w), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        pre = torch.empty((n, c0 + new.shape[1], h, w), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        ops.append_channels(buf, x, 0)
        ops.append_channels(buf, new, c0, pre, scale, shift)
        ops.append_channels(buf, pre[:, :new.shape[1]] * 2, c0 + new.shape[1])
        return buf, pre

    x = torch.randn(3, 5, 4, 6, generator=gen).to(device).contiguous(memory_format=CL)
    new = torch.randn(3, 7, 4, 6, generator=gen).to(device)
    scale, shift = torch.randn(12, generator=gen).to(device), torch.randn(12, generator=gen).to(device)
    got = torch.compile(step, fullgraph=True)(x, new, scale, shift)
    want = step(x, new, scale, shift)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **PREACT_TOL[torch.float32])
