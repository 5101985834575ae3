"""eexit.nn.MaxPool2d: an nn.MaxPool2d with compute paths (F.max_pool2d to train, the fused op to
infer), inside BranchyNet, under torch.fx cuts and torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eexit import ops
from eexit.models import b_alexnet, b_lenet
from eexit.nn import ComputePathModule, Conv2d, LocalResponseNorm, MaxPool2d, attach_exits, set_backend

from helpers import generator, new_seed


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls of eexit.ops.max_pool2d."""
    calls, op = [], ops.max_pool2d

    def counted(*args, **kwargs):
        calls.append(args)
        return op(*args, **kwargs)

    monkeypatch.setattr(ops, "max_pool2d", counted)
    return calls


def test_is_an_nn_max_pool_and_a_compute_path_module():
    m = MaxPool2d(3, 2, 1, ceil_mode=True, backend="fused")
    assert isinstance(m, nn.MaxPool2d) and isinstance(m, ComputePathModule)
    assert (m.kernel_size, m.stride, m.padding, m.ceil_mode) == (3, 2, 1, True)
    assert m.compute_path == "fast" and MaxPool2d(2).compute_path == "auto" and MaxPool2d(2).stride == 2
    assert m.state_dict() == {} and list(m.parameters()) == []
    assert repr(m) == "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True, compute_path='fast')"
    set_backend(m, "reference")
    assert m.compute_path == "reference"


def test_refuses_what_the_op_cannot_do():
    with pytest.raises(ValueError, match="MaxPool2d: dilation must be 1"):
        MaxPool2d(2, dilation=2)
    with pytest.raises(ValueError, match="MaxPool2d: return_indices must be False"):
        MaxPool2d(2, return_indices=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        MaxPool2d(2, backend="fast")
    assert MaxPool2d(2, dilation=(1, 1)).dilation == (1, 1)


@pytest.mark.parametrize("backend", ["auto", "fused"])
def test_inference_runs_the_op_and_training_the_reference(op_calls, backend):
    seed = new_seed()
    x = torch.randn(3, 4, 9, 7, generator=generator(seed))
    m = MaxPool2d(3, 2, 1, ceil_mode=True, backend=backend)
    want = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), want) and len(op_calls) == 1

    # training: F.max_pool2d with autograd (auto); the fused backend refuses train mode
    xg = x.clone().requires_grad_()
    m.train()
    if backend == "fused":
        with pytest.raises(RuntimeError, match="inference-only"):
            m(xg)
        return
    y = m(xg)
    y.square().sum().backward()
    xr = x.clone().requires_grad_()
    F.max_pool2d(xr, 3, 2, 1, ceil_mode=True).square().sum().backward()
    assert len(op_calls) == 1 and torch.equal(y, want) and torch.equal(xg.grad, xr.grad)
    m.eval()
    assert m(xg).requires_grad and len(op_calls) == 1  # auto: grad mode on means the reference


@pytest.mark.parametrize("build,shape", [(b_lenet, (1, 28, 28)), (b_alexnet, (3, 32, 32))], ids=["lenet", "alexnet"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_branchynet_fused_equals_reference(op_calls, build, shape, fmt):
    """Every exit's logits: the fused pools change no bit (the convolutions and LRNs kept on the
    reference path here: their fused paths round differently, tests/ops/test_direct_conv2d.py and
    tests/ops/test_local_response_norm.py)."""
    seed = new_seed()
    torch.manual_seed(seed)
    model = build().eval()
    pools = [m for m in model.modules() if isinstance(m, MaxPool2d)]
    assert pools and all(m.ceil_mode for m in pools)
    x = torch.randn(13, *shape, generator=generator(seed)).contiguous(memory_format=fmt)
    with torch.no_grad():
        want = model.set_backend("reference")(x)
        assert not op_calls
        model.set_backend("fused")
        for m in model.modules():
            if isinstance(m, (Conv2d, LocalResponseNorm)):
                m.compute_path = "reference"
        got = model(x)
    assert len(op_calls) == len(pools)
    for k, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"seed={seed} exit {k}"


class PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = MaxPool2d(3, 2, 1, ceil_mode=True)
        self.head = nn.Sequential(nn.Conv2d(6, 8, 3), MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(5))

    def forward(self, x):
        return self.head(F.relu(self.pool(self.conv(x))))


def test_fx_cuts_keep_it_a_module(op_calls):
    """attach_exits traces with eexit's tracer, which keeps compute-path modules as leaves."""
    seed = new_seed()
    torch.manual_seed(seed)
    model = PoolNet()
    x = torch.randn(4, 3, 15, 13, generator=generator(seed))
    model(x)  # materialises the LazyLinear
    net = attach_exits(model.eval(), ["pool"], 5, x[:1])
    assert any(isinstance(m, MaxPool2d) for m in net.stages[0].modules())
    with torch.no_grad():
        want = net.set_backend("reference")(x)
        op_calls.clear()
        got = net.set_backend("fused")(x)
    assert op_calls
    for g, w in zip(got, want):
        assert torch.equal(g, w), f"seed={seed}"


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    seed = new_seed()
    torch.manual_seed(seed)
    model = PoolNet()
    model(torch.randn(1, 3, 15, 13))
    set_backend(model.eval(), "fused")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    with torch.no_grad():
        for n in (2, 5):
            x = torch.randn(n, 3, 15, 13, generator=generator(seed + n))
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5,
                                       msg=lambda m: f"seed={seed} n={n}: {m}")
    torch._dynamo.reset()
