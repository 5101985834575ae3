"""oneDNN convolutions with packed weights (eexit.nn.packed_conv) and the inference graphs that use
them for traced stages (eexit.nn.inference_graph): against F.conv2d / the modules as written, on
fresh random inputs, odd sizes, empty batches and every layout; the pack follows in-place weight
updates; inputs it does not take run F.conv2d exactly."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eexit.nn import Conv2d, ConvBNReLU, attach_exits, set_backend
from eexit.nn.execution import FoldCache
from eexit.nn.inference_graph import ConvUnit, inference_body
from eexit.nn.packed_conv import ONEDNN, conv2d_onednn, packs

from helpers import MODULE_TOL, assert_within_torch_error, generator, new_seed, randomise_bn

pytestmark = pytest.mark.skipif(not ONEDNN, reason="PyTorch built without oneDNN")
CL = torch.channels_last

# (C_in, C_out, kernel, stride, padding, dilation, groups, H, W)
GEOMETRIES = [
    (3, 16, 3, 1, 1, 1, 1, 9, 13),
    (64, 64, 3, 1, 1, 1, 1, 5, 7),
    (48, 96, 3, 2, 1, 1, 1, 7, 6),
    (24, 36, 1, 1, 0, 1, 1, 4, 4),
    (16, 24, (3, 5), (1, 2), (1, 2), 1, 4, 11, 10),
    (8, 8, 3, 1, 2, 2, 8, 9, 9),
    (512, 512, 3, 1, 1, 1, 1, 2, 2),
]


def _conv(geometry, bias=True):
    c_in, c_out, k, s, p, d, g, h, w = geometry
    return nn.Conv2d(c_in, c_out, k, s, p, d, g, bias=bias), (c_in, h, w)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_packed_conv_matches_float64_within_torchs_error(geometry, relu):
    seed = new_seed()
    torch.manual_seed(seed)
    conv, (c, h, w) = _conv(geometry, bias=bool(seed % 2))
    n = 1 + seed % 5
    x = torch.randn(n, c, h, w, generator=generator(seed)).contiguous(memory_format=CL)
    assert packs(x, conv.weight, conv.bias)
    cache = FoldCache()
    with torch.no_grad():
        got = conv2d_onednn(x, conv, conv.weight, conv.bias, cache, "p", [conv.weight], relu=relu)
        again = conv2d_onednn(x, conv, conv.weight, conv.bias, cache, "p", [conv.weight], relu=relu)
        torch_out = conv(x)
        exact = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                         conv.stride, conv.padding, conv.dilation, conv.groups)
    if relu:
        torch_out, exact = torch_out.relu(), exact.relu()
    assert got.shape == torch_out.shape and got.is_contiguous(memory_format=CL)
    assert_within_torch_error(got, torch_out, exact, torch.float32, f"seed {seed}")
    assert torch.equal(got, again) and len(cache._store) == 1  # packed once, reused


def test_pack_follows_in_place_weight_updates_and_empty_batches():
    seed = new_seed()
    torch.manual_seed(seed)
    conv = Conv2d(32, 48, 3, padding=1).eval()
    x = torch.randn(3, 32, 5, 7, generator=generator(seed)).contiguous(memory_format=CL)
    with torch.no_grad():
        for _ in range(2):
            got = conv(x)
            torch.testing.assert_close(got, F.conv2d(x, conv.weight, conv.bias, padding=1), **MODULE_TOL[torch.float32])
            conv.weight.mul_(-0.5)  # in place: the pack must not go stale
            conv.bias.add_(1.0)
        assert conv(x[:0]).shape == (0, 48, 5, 7)


@pytest.mark.parametrize("case", ["nchw", "float64", "half", "ambiguous", "strided", "one_pixel"])
def test_inputs_it_does_not_pack_run_f_conv2d_and_keep_their_layout(case):
    seed = new_seed()
    torch.manual_seed(seed)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    x = torch.randn(2, 6, 5, 5, generator=generator(seed))
    if case == "float64":
        conv, x = conv.double(), x.double()
    elif case == "half":
        conv, x = conv.half(), x.half()
    elif case == "ambiguous":  # one channel: dense in both layouts, taken as NCHW
        conv, x = nn.Conv2d(1, 10, 3, padding=1), x[:, :1].contiguous()
    elif case == "strided":
        x = torch.randn(2, 12, 5, 5, generator=generator(seed)).contiguous(memory_format=CL)[:, :6]  # a channel window
    elif case == "one_pixel":  # [N, C, 1, 1] is dense in both layouts: packed, output kept NCHW-dense
        x = x[:, :, :1, :1].contiguous()
    cache = FoldCache()
    with torch.no_grad():
        got = conv2d_onednn(x, conv, conv.weight, conv.bias, cache, "p", [conv.weight])
        want = conv(x)
    assert got.is_contiguous() == want.is_contiguous()
    if case == "one_pixel":
        assert len(cache._store) == 1
        torch.testing.assert_close(got, want, **MODULE_TOL[torch.float32])
    else:
        assert not cache._store and torch.equal(got, want)


@pytest.mark.parametrize("module", ["Conv2d", "ConvBNReLU"])
@pytest.mark.parametrize("shape", [(2, 8, 6, 6), (2, 16, 1, 2)], ids=["channels", "too_small"])
def test_input_that_does_not_fit_gets_pytorchs_error(shape, module):
    """Wrong channels, or fewer pixels than the kernel (no padding): the error PyTorch gives for the
    same input, naming the sizes, not oneDNN's 'could not create a primitive descriptor'."""
    layer = Conv2d(16, 24, 3).eval() if module == "Conv2d" else ConvBNReLU(16, 24, 3, 1, 0).eval()
    conv = layer if module == "Conv2d" else layer.net[0]
    x = torch.randn(*shape).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError) as want:
        F.conv2d(x, conv.weight, conv.bias)
    with torch.no_grad(), pytest.raises(RuntimeError) as got:
        layer(x)
    assert str(got.value) == str(want.value) and "primitive" not in str(got.value)


def test_not_packed_while_torch_compile_traces():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=CL)
    cache = FoldCache()

    def f(x):
        return conv2d_onednn(x, conv, conv.weight, conv.bias, cache, "p", [conv.weight], relu=True)

    with torch.no_grad():
        got = torch.compile(f, backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(got, conv(x).relu(), **MODULE_TOL[torch.float32])
    assert not cache._store


def test_modules_with_packs_copy_and_pickle():
    conv = Conv2d(16, 24, 3, padding=1).eval()
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=CL)
    with torch.no_grad():
        want = conv(x)  # fills the cache with an opaque oneDNN tensor
        for other in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
            assert torch.equal(other(x), want)


class Block(nn.Module):
    """A torchvision-style basic block with the patterns the rewrite looks for, and some it must leave."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1)  # -> F.relu
        self.conv4, self.bn4 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)  # BN output used twice: no ReLU fused
        self.conv5 = nn.Conv2d(c, c, 3, padding="same")  # not packable: runs as written
        self.conv6 = nn.Conv2d(c, c, 1)  # two users: not fused with its ReLU

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h)) + x
        h = F.relu(self.conv3(self.relu(h)))
        b = self.bn4(self.conv4(h))
        h = self.conv5(b.relu() + b)
        c = self.conv6(h)
        return torch.relu(c) + c


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1, self.layer2 = Block(16), Block(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def test_inference_body_fuses_conv_bn_relu_chains_and_equals_the_graph():
    seed = new_seed()
    torch.manual_seed(seed)
    model = Net().eval()
    randomise_bn(model, generator(seed), affine=True)
    body = torch.fx.symbolic_trace(model)
    fused = inference_body(body)
    units = {n: m for n, m in fused.named_modules() if isinstance(m, ConvUnit)}
    # stem conv+bn+relu; per block: conv1+bn1+relu, conv2+bn2, conv3+relu, conv4+bn4, conv6
    assert len(units) == 1 + 2 * 5, sorted(units)
    assert sorted((u.bn is not None, u.relu) for u in units.values()).count((True, True)) == 3
    assert sum(u.relu for u in units.values()) == 5
    assert sum(isinstance(m, nn.Conv2d) and m.padding == "same" for m in fused.modules()) == 2
    assert str(body.graph) == str(torch.fx.symbolic_trace(model).graph)  # body left as it was
    for fmt in (CL, torch.contiguous_format):
        x = torch.randn(1 + seed % 6, 3, 9, 7, generator=generator(seed)).contiguous(memory_format=fmt)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), **MODULE_TOL[torch.float32])
            model.layer2.conv2.weight.mul_(0.5)  # the units share the model's modules (and refold)
            model.layer1.bn1.running_var.mul_(2.0)
            torch.testing.assert_close(fused(x), model(x), **MODULE_TOL[torch.float32])
    model.layer1.bn1.train()  # batch statistics: that unit runs the modules as written
    x = torch.randn(4, 3, 9, 7, generator=generator(seed)).contiguous(memory_format=CL)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **MODULE_TOL[torch.float32])


def test_attached_network_runs_the_inference_body_on_inference_paths_only():
    seed = new_seed()
    torch.manual_seed(seed)
    model = Net().eval()
    randomise_bn(model, generator(seed), affine=True)
    net = attach_exits(model, ["layer1"], 5, torch.zeros(1, 3, 9, 7)).eval()
    keys = list(net.state_dict())
    x = torch.randn(5, 3, 9, 7, generator=generator(seed)).contiguous(memory_format=CL)
    with torch.no_grad():
        fast = net(x)
        assert all(s._infer_body is not None for s in net.stages)
        assert any(isinstance(m, ConvUnit) for m in net.stages[0]._infer_body.modules())
        set_backend(net, "reference")
        ref = net(x)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, **MODULE_TOL[torch.float32])
    assert list(net.state_dict()) == keys
    set_backend(net, "auto")
    saved = io.BytesIO()
    torch.save(net, saved)  # with the built bodies and their packed weights
    saved.seek(0)
    with torch.no_grad():
        for other in (copy.deepcopy(net), torch.load(saved, weights_only=False)):
            assert all(torch.equal(a, b) for a, b in zip(other(x), fast))
    set_backend(net, "fused").train()
    with pytest.raises(RuntimeError, match="inference-only"):
        net(x)
    net.eval().to(torch.float64)  # .to() drops the built bodies: they would hold stale modules
    assert all(s._infer_body is None for s in net.stages)
