"""BranchyNet models (official kunglab/branchynet layer lists), ResBlock's compute paths and the joint loss."""
import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eexit.losses import joint_loss
from eexit.models import b_alexnet, b_lenet, b_resnet110
from eexit.models.branchynet import BN_EPS, ResBlock, chainer_lrn
from eexit.nn import EarlyExitNetwork

from helpers import DTYPES, MODULE_TOL, assert_within_torch_error, generator, new_seed, randomise_bn

INPUT = {"b_lenet": (1, 28, 28), "b_alexnet": (3, 32, 32), "b_resnet110": (3, 32, 32)}
BUILDERS = {"b_lenet": b_lenet, "b_alexnet": b_alexnet, "b_resnet110": b_resnet110}


# ---- parameter counts, from the official layer lists (chainer L.Convolution2D / L.Linear /
# L.BatchNormalization all with bias / beta) -----------------------------------------------------

def conv(c_in, c_out, k):
    return c_out * c_in * k * k + c_out


def lin(n_in, n_out):
    return n_in * n_out + n_out


def bn(c):
    return 2 * c


def resblock(c_in, c_out):
    return conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)


def expected_params(name, c):
    """(per-stage counts, per-exit counts) of networks/<name>.py, split at its Branch entries."""
    if name == "b_lenet":
        stages = [conv(1, 5, 5), conv(5, 10, 5) + conv(10, 20, 5) + lin(720, 84)]
        exits = [conv(5, 10, 3) + lin(640, c), lin(84, c)]
    elif name == "b_alexnet":
        stages = [
            conv(3, 32, 5) + conv(32, 64, 5),
            conv(64, 96, 3),
            conv(96, 96, 3) + conv(96, 64, 3) + lin(1024, 256) + lin(256, 128),
        ]
        exits = [
            conv(64, 32, 3) + conv(32, 32, 3) + lin(512, c),  # norm() + conv(64) + conv(32) + cap(512)
            conv(96, 32, 3) + lin(128, c),  # norm() + conv(96) + cap(128)
            lin(128, c),
        ]
    else:
        n = 18
        stages = [
            conv(3, 16, 3) + bn(16),
            n * resblock(16, 16),
            resblock(16, 32) + (n - 1) * resblock(32, 32) + resblock(32, 64) + (n - 1) * resblock(64, 64),
        ]
        exits = [
            conv(16, 64, 5) + conv(64, 32, 3) + conv(32, 32, 3) + lin(28800, c),
            resblock(16, 16) + lin(14400, c),
            lin(576, c),
        ]
    return stages, exits


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build() for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_parameter_counts(models, name):
    net = models[name]
    stages, exits = expected_params(name, 10)
    assert [count(s) for s in net.stages] == stages
    assert [count(e) for e in net.exits] == exits
    assert count(net) == sum(stages) + sum(exits)


def test_parameter_counts_other_num_classes():
    net = b_lenet(num_classes=7)
    stages, exits = expected_params("b_lenet", 7)
    assert count(net) == sum(stages) + sum(exits)


# ---- shapes and stage boundaries ----------------------------------------------------------------

# Output of each stage for one sample (Chainer sizes: ceil-mode max-pooling, pad-0 ResNet stem).
STAGE_SHAPES = {
    "b_lenet": [(5, 30, 30), (84,)],
    "b_alexnet": [(64, 16, 16), (96, 8, 8), (128,)],
    "b_resnet110": [(16, 30, 30), (16, 30, 30), (64, 3, 3)],
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_forward_shapes(models, name):
    seed = new_seed()
    net = models[name]
    assert isinstance(net, EarlyExitNetwork)
    assert len(net.stages) == len(net.exits) == len(STAGE_SHAPES[name])
    x = torch.randn(2, *INPUT[name], generator=generator(seed))
    seen = []  # one forward; hooks record what each stage hands to its exit
    hooks = [s.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape))) for s in net.stages]
    try:
        with torch.no_grad():
            outs = net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(2,) + s for s in STAGE_SHAPES[name]], (name, seed)
    assert len(outs) == len(STAGE_SHAPES[name])
    for k, out in enumerate(outs):
        assert out.shape == (2, 10), (name, k, seed)
        assert torch.isfinite(out).all(), (name, k, seed)


@pytest.mark.parametrize("name", ["b_lenet", "b_alexnet"])
def test_every_exit_has_num_classes(name):
    net = BUILDERS[name](num_classes=7)
    with torch.no_grad():
        outs = net.eval()(torch.zeros(2, *INPUT[name]))
    assert [tuple(o.shape) for o in outs] == [(2, 7)] * len(outs)


def convs(module):
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


# Number of trunk conv layers before each branch point, and in the whole trunk (official code;
# the paper's text says 1 for B-LeNet, 1 and 2 for B-AlexNet, 2 and 37 for B-ResNet-110).
TRUNK_CONVS = {"b_lenet": [1, 3], "b_alexnet": [2, 3, 5], "b_resnet110": [1, 37, 109]}
EXIT_CONVS = {"b_lenet": [1, 0], "b_alexnet": [2, 1, 0], "b_resnet110": [3, 2, 0]}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_branch_points(models, name):
    net = models[name]
    cumulative = [sum(convs(s) for s in net.stages[: k + 1]) for k in range(len(net.stages))]
    assert cumulative == TRUNK_CONVS[name]
    assert [convs(e) for e in net.exits] == EXIT_CONVS[name]


def test_alexnet_branches_read_pre_activation_conv_outputs(models):
    net = models["b_alexnet"]
    for stage, c_out in zip(net.stages[:2], (64, 96)):
        assert isinstance(stage[-1], nn.Conv2d) and stage[-1].out_channels == c_out
    for head in net.exits[:2]:
        assert isinstance(head[0], nn.ReLU)


def test_relus_in_place_only_on_fresh_tensors(models):
    """A stage's output is read by its exit and the next stage: no stage or exit starts with an
    in-place ReLU; in-place ones only follow a layer that made a new tensor in the same Sequential."""
    fresh = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.Linear, nn.Sequential)
    for net in models.values():
        for part in [*net.stages, *net.exits]:
            layers = list(part) if isinstance(part, nn.Sequential) else [part]
            assert not (isinstance(layers[0], nn.ReLU) and layers[0].inplace)
            for before, m in zip(layers, layers[1:]):
                if isinstance(m, nn.ReLU) and m.inplace:
                    assert isinstance(before, fresh), (before, m)
    assert sum(isinstance(m, nn.ReLU) and m.inplace for m in models["b_alexnet"].modules()) == 8


def test_chainer_semantics(models):
    for net in models.values():
        for m in net.modules():
            if isinstance(m, nn.MaxPool2d):
                assert m.ceil_mode  # Chainer cover_all=True
            if isinstance(m, nn.BatchNorm2d):
                assert m.eps == BN_EPS
            if isinstance(m, nn.LocalResponseNorm):
                assert (m.size, m.alpha, m.beta, m.k) == (3, pytest.approx(3 * 5e-5), 0.75, 2.0)
    resnet = models["b_resnet110"]
    stem = resnet.stages[0][0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (0, 0))
    pool = resnet.stages[2][-1]
    assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride) == (6, 1)


# ---- building blocks ------------------------------------------------------------------------------

def chainer_lrn_reference(x, n, k, alpha, beta):
    """chainer.functions.local_response_normalization, written out."""
    half = n // 2
    sq = x * x
    s = torch.zeros_like(x)
    channels = x.shape[1]
    for c in range(channels):
        s[:, c] = sq[:, max(0, c - half): min(channels, c + half + 1)].sum(1)
    return x / (k + alpha * s) ** beta


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_lrn_matches_chainer(n, fmt):
    """chainer_lrn (eexit.nn.LocalResponseNorm; with grad, its reference path) equals Chainer's
    definition and PyTorch's LocalResponseNorm (values and gradients), keeps the memory format, and
    handles fewer channels than the window."""
    seed = new_seed()
    for c in [7, 2]:
        x = (torch.randn(2, c, 4, 5, generator=generator(seed), dtype=torch.float64) * 30).contiguous(memory_format=fmt)
        lrn = chainer_lrn(n=n, k=2.0, alpha=5e-5, beta=0.75)
        got = lrn(x.requires_grad_())
        assert got.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got, chainer_lrn_reference(x, n, 2.0, 5e-5, 0.75), msg=f"seed {seed}")
        torch_lrn = nn.LocalResponseNorm(lrn.size, lrn.alpha, lrn.beta, lrn.k)
        torch.testing.assert_close(got, torch_lrn(x), msg=f"seed {seed}")
        g = torch.randn_like(got)
        want_grad, = torch.autograd.grad(torch_lrn(x), x, g)
        got_grad, = torch.autograd.grad(got, x, g)
        torch.testing.assert_close(got_grad, want_grad, msg=f"seed {seed}")
    with pytest.raises(ValueError, match="odd"):
        chainer_lrn(n=4)


def test_resblock_zero_pad_shortcut():
    seed = new_seed()
    block = ResBlock(16, 32, stride=2)
    with torch.no_grad():
        block.bn2.weight.zero_()  # residual branch is exactly 0: output = relu(shortcut(x))
        block.bn2.bias.zero_()
    x = torch.randn(2, 16, 15, 15, generator=generator(seed))
    y = block(x)
    assert y.shape == (2, 32, 8, 8)
    assert (y[:, :16] == 0).all()  # zero channels in front, as F.concat((zeros, x))
    torch.testing.assert_close(y[:, 16:], F.relu(x[:, :, ::2, ::2]), msg=f"seed {seed}")
    with pytest.raises(ValueError):
        ResBlock(32, 16)


RESBLOCK_CASES = [(16, 16, 1), (16, 32, 2), (5, 7, 1), (3, 8, 2)]
FORMATS = [torch.contiguous_format, torch.channels_last]


def random_resblock(c_in, c_out, stride, gen):
    block = ResBlock(c_in, c_out, stride)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.bias.copy_(torch.randn(conv.out_channels, generator=gen) * 0.3)
    return randomise_bn(block, gen, mean_std=0.5, affine=True).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("c_in,c_out,stride", RESBLOCK_CASES)
def test_resblock_fused_matches_reference(c_in, c_out, stride, fmt, dtype):
    """The inference path (BatchNorm folded, shortcut added in place) against a float64 reference,
    its error at most a few times the reference path's own in the same dtype: empty, single-sample
    (the direct convolution) and larger batches (F.conv2d), odd sizes, sliced input; x untouched."""
    seed = new_seed()
    gen, r = generator(seed), random.Random(seed)
    block = random_resblock(c_in, c_out, stride, gen)
    exact = copy.deepcopy(block).double().set_backend("reference")
    block = block.to(dtype)
    for n in (0, 1, r.randint(2, 40), "sliced"):
        h, w = r.randint(1, 17), r.randint(1, 17)
        if n == "sliced":
            x = torch.randn(3, c_in + 2, h + 1, w + 3, generator=gen).to(dtype).contiguous(memory_format=fmt)
            x = x[:, 1:-1, 1:, 2:-1]
        else:
            x = torch.randn(n, c_in, h, w, generator=gen).to(dtype).contiguous(memory_format=fmt)
        before = x.clone()
        msg = f"seed={seed} n={n} h={h} w={w}"
        with torch.inference_mode():
            want = exact(x.double())
            ref = block.set_backend("reference")(x)
            got = block.set_backend("fused")(x)
        assert got.shape == want.shape and got.dtype == dtype, msg
        assert torch.equal(x, before), msg
        if want.numel():
            assert_within_torch_error(got, ref, want, dtype, msg)
        if n != "sliced" and x.numel() and h * w > 1:
            assert got.is_contiguous(memory_format=fmt), msg


def test_resblock_paths_share_parameters_and_follow_them():
    """One state_dict (the official layer names) on every path; training runs the reference path
    (autograd, BatchNorm statistics); the folded weights follow in-place edits and load_state_dict."""
    seed = new_seed()
    gen = generator(seed)
    block = random_resblock(16, 32, 2, gen)
    keys = [f"{m}.{k}" for m in ("conv1", "bn1", "conv2", "bn2")
            for k in (("weight", "bias") if m.startswith("conv") else
                      ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))]
    assert list(block.state_dict()) == keys
    assert list(block.set_backend("fused").state_dict()) == keys
    x = torch.randn(5, 16, 9, 11, generator=gen)

    def check(msg):
        with torch.inference_mode():
            torch.testing.assert_close(block.set_backend("fused")(x), block.set_backend("reference")(x),
                                       **MODULE_TOL[torch.float32], msg=lambda m: f"seed={seed} {msg}: {m}")

    check("fresh")
    with torch.no_grad():
        block.bn2.running_var.mul_(3.0)
        block.conv1.bias.add_(0.5)
    check("after in-place edits")
    block.load_state_dict(random_resblock(16, 32, 2, gen).state_dict())
    check("after load_state_dict")
    block.set_backend("auto").train()
    y = block(x.requires_grad_())
    y.sum().backward()
    assert block.bn1.num_batches_tracked.item() == 1 and x.grad is not None and block.conv1.weight.grad is not None
    with pytest.raises(RuntimeError, match="eval"):
        block.set_backend("fused")(x)
    block.eval()
    check("after a training step")


def test_chainer_init():
    torch.manual_seed(0)
    net = b_resnet110()
    last = net.stages[2][-2].conv2  # Convolution2D(64, 64, 3, 1, 1, wscale=sqrt(2))
    assert last.weight.std().item() == pytest.approx(math.sqrt(math.sqrt(2) / (64 * 9)), rel=0.05)
    assert (last.bias == 0).all()
    fc = net.exits[1][1][1]  # L.Linear(14400, 10), wscale 1
    assert fc.weight.std().item() == pytest.approx(math.sqrt(1 / 14400), rel=0.05)
    assert (fc.bias == 0).all()
    net_t = b_lenet(init="torch")
    assert net_t.exits[1].bias.abs().sum() > 0  # PyTorch's default init keeps random biases


def test_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        b_lenet(init="he")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            b_alexnet(num_classes=bad)


def test_joint_loss_trains_a_branchynet():
    torch.manual_seed(0)
    net = b_lenet()
    x, target = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    joint_loss(net(x), target, [1.0, 0.3]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.stages[0][0].weight.grad.abs().sum() > 0
