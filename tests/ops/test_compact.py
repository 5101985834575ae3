"""eexit.ops.compact against eexit.reference.compact: exact rows, dtype and memory format kept."""
import pytest
import torch

from eexit import ops, reference

from helpers import DEVICES, generator, new_seed

FORMATS = {
    "contiguous": lambda t: t.contiguous(),
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
}


def random_tensor(shape, dtype, device, gen):
    if dtype == torch.bool:
        return (torch.rand(shape, generator=gen) > 0.5).to(device)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype=dtype, device=device)
    return torch.randint(-100, 100, shape, generator=gen).to(dtype=dtype, device=device)


def check_same(out, tensors, index):
    ref = reference.compact(tensors, index)
    assert len(out) == len(ref) == len(tensors)
    for o, r, t in zip(out, ref, tensors):
        assert o.dtype == t.dtype and o.device == t.device and o.shape == r.shape
        assert torch.equal(o, r)
        assert o.stride() == r.stride(), (o.stride(), r.stride())


def random_index(n, gen, kind, device):
    if kind == "subset":
        return torch.nonzero(torch.rand(n, generator=gen) > 0.4).flatten().to(device)
    if kind == "repeats":
        return torch.randint(0, n, (2 * n + 1,), generator=gen).to(device)
    if kind == "empty":
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.arange(n, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["subset", "repeats", "empty", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool])
def test_matches_reference(device, kind, dtype):
    seed = new_seed()
    gen = generator(seed)
    n = 37
    tensors = [
        random_tensor((n,), dtype, device, gen),
        random_tensor((n, 13), dtype, device, gen),
        FORMATS["channels_last"](random_tensor((n, 3, 5, 7), dtype, device, gen)),
        random_tensor((n, 3, 5, 7), dtype, device, gen),
        random_tensor((n, 2, 3, 4, 5), dtype, device, gen).contiguous(memory_format=torch.channels_last_3d),
        random_tensor((n, 0), dtype, device, gen),
    ]
    index = random_index(n, gen, kind, device)
    check_same(ops.compact(tensors, index), tensors, index)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_format_is_kept(device):
    x = torch.randn(9, 4, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randn(9, 4, 6, 6, device=device)
    idx = torch.tensor([8, 0, 3], device=device)
    ox, oy = ops.compact([x, y], idx)
    assert ox.is_contiguous(memory_format=torch.channels_last) and not ox.is_contiguous()
    assert oy.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_non_dense_inputs(device):
    gen = generator(seed := new_seed())
    base = torch.randn(20, 6, 8, generator=gen).to(device)
    tensors = [base.transpose(1, 2), base[:, ::2], base[::2], base.permute(2, 1, 0)[:5].transpose(0, 1)]
    for t in tensors:
        idx = torch.randint(0, t.shape[0], (7,), generator=gen).to(device)
        (out,) = ops.compact([t], idx)
        assert torch.equal(out, t.index_select(0, idx)), f"seed={seed}"
        assert out.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_many_tensors(device):
    """More tensors than one CUDA launch carries (64), of different widths; tensors with different row
    counts are refused (tests/test_input_checks.py)."""
    gen = generator(new_seed())
    tensors = [torch.randn(10, 1 + i % 5, generator=gen).to(device) for i in range(70)]
    idx = torch.tensor([9, 2, 2, 0], device=device)
    check_same(ops.compact(tensors, idx), tensors, idx)
    assert ops.compact([], idx) == []


@pytest.mark.parametrize("device", DEVICES)
def test_large_rows(device):
    gen = generator(new_seed())
    t = torch.randn(300, 64, 9, 9, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    idx = torch.nonzero(torch.rand(300, generator=gen) > 0.5).flatten().to(device)
    check_same(ops.compact([t, t.half()], idx), [t, t.half()], idx)


@pytest.mark.parametrize("fn", [ops.compact, reference.compact], ids=["fused", "reference"])
@pytest.mark.parametrize(
    "tensors,index,exc,match",
    [
        ([torch.randn(4, 2)], torch.tensor([0.0, 1.0]), TypeError, "int64"),
        ([torch.randn(4, 2)], torch.tensor([[0, 1]]), ValueError, "rank 1"),
        ([torch.tensor(3.0)], torch.tensor([0]), ValueError, "rank >= 1"),
        ([torch.randn(4, 2), "x"], torch.tensor([0]), TypeError, "list or tuple of tensors"),
        (torch.randn(4, 2), torch.tensor([0]), TypeError, "list or tuple of tensors"),
        ([torch.randn(4, 2)], [0, 1], TypeError, "index must be a torch.Tensor"),
        ([torch.randn(4, 2)], torch.tensor([0, 4]), IndexError, "out of range|index"),
        ([torch.randn(4, 2)], torch.tensor([-1]), IndexError, "out of range|index"),
        ([torch.randn(0, 2)], torch.tensor([0]), IndexError, "out of range|index"),
    ],
)
def test_bad_input(fn, tensors, index, exc, match):
    with pytest.raises(exc, match=match):
        fn(tensors, index)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch():
    with pytest.raises(ValueError, match="index is on"):
        ops.compact([torch.randn(4, 2)], torch.tensor([0], device="cuda"))


def test_refuses_grad():
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.compact([x], torch.tensor([1]))
    with torch.inference_mode():
        assert ops.compact([x], torch.tensor([1]))[0].shape == (1, 3)
