"""fuse_dense_blocks and DenseConcatBlock.from_torchvision: torchvision DenseNets (weights=None) with
eexit's dense blocks compute what they computed, on every backend and in training, share their
parameters, load torchvision's checkpoints, and refuse what they cannot compute exactly."""
import copy
import re

import pytest
import torch
from torch import nn

from eexit.nn import DenseConcatBlock, fuse_dense_blocks, set_backend

from helpers import TRITON_DEVICE, TRITON_MODULE_TOL, generator, new_seed, randomise_bn, require_triton_device
from test_nn_modules import MODULE_TOL

models = pytest.importorskip("torchvision.models")
_DenseBlock = models.densenet._DenseBlock

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def small_densenet(**kw) -> nn.Module:
    return models.DenseNet(growth_rate=8, block_config=(2, 3), num_init_features=16, bn_size=2, num_classes=5, **kw)


BUILDERS = {"small": small_densenet, "densenet121": models.densenet121}
BLOCKS = {"small": 2, "densenet121": 4}


def densenet(kind: str, seed: int, **kw) -> nn.Module:
    """Fresh weights, BatchNorm statistics and affines away from the identity."""
    torch.manual_seed(seed)
    return randomise_bn(BUILDERS[kind](**kw), generator(seed), mean_std=0.5, affine=True)


def original_and_fused(kind: str, seed: int, **kw):
    model = densenet(kind, seed, **kw)
    return copy.deepcopy(model), fuse_dense_blocks(model)


def torchvision_name(name: str) -> str:
    """An eexit key or parameter name in torchvision's layout (``layers.{N-1}.`` -> ``denselayerN.``)."""
    return re.sub(r"\.layers\.(\d+)\.", lambda m: f".denselayer{int(m[1]) + 1}.", name)


@pytest.mark.parametrize("kind", BUILDERS)
def test_swaps_every_dense_block_and_shares_its_parameters(kind):
    model = densenet(kind, new_seed())
    tensors = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    fused = fuse_dense_blocks(model)
    assert fused is model
    blocks = [m for m in model.modules() if isinstance(m, DenseConcatBlock)]
    assert len(blocks) == BLOCKS[kind] and not any(isinstance(m, _DenseBlock) for m in model.modules())
    assert isinstance(model.features.denseblock1, DenseConcatBlock)
    swapped = {torchvision_name(name): t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    assert swapped.keys() == tensors.keys()
    assert all(swapped[name] is t for name, t in tensors.items())
    assert fuse_dense_blocks(model) is model and [m for m in model.modules() if isinstance(m, DenseConcatBlock)] \
        == blocks, "fusing again changes nothing"


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("n,h,w,fmt", [(2, 32, 32, "contiguous"), (2, 32, 32, "channels_last"),
                                       (1, 37, 29, "contiguous"), (0, 32, 32, "contiguous")])
def test_eval_matches_the_original_on_every_backend(kind, n, h, w, fmt):
    """Logits and the feature map: bit for bit on the reference path, folded BatchNorm within MODULE_TOL."""
    seed = new_seed()
    original, fused = original_and_fused(kind, seed)
    original.eval()
    fused.eval()
    x = torch.randn(n, 3, h, w, generator=generator(seed)).contiguous(memory_format=FORMATS[fmt])
    with torch.inference_mode():
        want = original.features(x), original(x)
        for backend in ("auto", "fused", "reference"):
            got = set_backend(fused, backend).features(x), fused(x)
            for g, r in zip(got, want):
                assert g.shape == r.shape and g.dtype == r.dtype
                tol = dict(atol=0, rtol=0) if backend == "reference" else MODULE_TOL[torch.float32]
                torch.testing.assert_close(g, r, **tol, msg=lambda m: f"seed={seed} backend={backend} {m}")
            assert got[0].is_contiguous(memory_format=FORMATS[fmt]) == want[0].is_contiguous(
                memory_format=FORMATS[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_matches_the_original_on_triton(fmt):
    """The small DenseNet only: densenet121 takes minutes under the Triton interpreter."""
    require_triton_device()
    seed = new_seed()
    original, fused = original_and_fused("small", seed)
    original.to(TRITON_DEVICE).eval()
    fused.to(TRITON_DEVICE).eval()
    x = torch.randn(2, 3, 19, 17, generator=generator(seed)).to(TRITON_DEVICE, memory_format=FORMATS[fmt])
    with torch.inference_mode():
        want, got = original.features(x), set_backend(fused, "triton").features(x)
    torch.testing.assert_close(got, want, **TRITON_MODULE_TOL[torch.float32], msg=lambda m: f"seed={seed} {m}")


def train_step(model: nn.Module, x: torch.Tensor, weight: torch.Tensor):
    """(output, input gradient) of one forward and backward in training mode."""
    x = x.clone().requires_grad_()
    y = model.train()(x)
    (y * weight).sum().backward()
    return y, x.grad


@pytest.mark.parametrize("kind", BUILDERS)
def test_training_matches_the_original_on_the_reference_backend(kind):
    """Outputs, input and parameter gradients and the updated running statistics, bit for bit."""
    seed = new_seed()
    gen = generator(seed)
    original, fused = original_and_fused(kind, seed)
    set_backend(fused, "reference")
    x = torch.randn(2, 3, 33, 31, generator=gen)
    weight = torch.randn(2, original.classifier.out_features, generator=gen)
    (y0, g0), (y1, g1) = train_step(original, x, weight), train_step(fused, x, weight)
    assert torch.equal(y1, y0) and torch.equal(g1, g0), f"seed={seed}"
    params = dict(original.named_parameters())
    for name, p in fused.named_parameters():
        assert torch.equal(p.grad, params[torchvision_name(name)].grad), f"seed={seed} {name}"
    buffers = dict(original.named_buffers())
    for name, b in fused.named_buffers():
        assert torch.equal(b, buffers[torchvision_name(name)]), f"seed={seed} {name}"


def test_memory_efficient_blocks_compute_the_same():
    """Checkpointing does not change outputs or gradients; torchvision's recomputation updates norm1's
    running statistics a second time, the swapped block once, as without memory_efficient."""
    seed = new_seed()
    gen = generator(seed)
    checkpointed, fused = original_and_fused("small", seed, memory_efficient=True)
    plain = densenet("small", seed)  # the same weights
    x = torch.randn(2, 3, 16, 16, generator=gen)
    weight = torch.randn(2, 5, generator=gen)
    (y0, g0), (y1, g1) = train_step(checkpointed, x, weight), train_step(fused, x, weight)
    train_step(plain, x, weight)
    assert torch.equal(y1, y0) and torch.equal(g1, g0), f"seed={seed}"
    grads = {name: p.grad for name, p in checkpointed.named_parameters()}
    assert all(torch.equal(p.grad, grads[torchvision_name(name)]) for name, p in fused.named_parameters())
    buffers = dict(plain.named_buffers())
    assert all(torch.equal(b, buffers[torchvision_name(name)]) for name, b in fused.named_buffers()), f"seed={seed}"


@pytest.mark.parametrize("kind", BUILDERS)
def test_loads_torchvision_state_dicts(kind):
    """A torchvision checkpoint (``denselayerN`` keys) loads strictly into the fused model, which then
    computes what the checkpoint's model computes; eexit's own keys load as before."""
    seed = new_seed()
    source = densenet(kind, seed).eval()
    fused = fuse_dense_blocks(densenet(kind, seed + 1))
    state = source.state_dict()
    keys = list(state)
    fused.load_state_dict(state, strict=True)
    assert list(state) == keys, "the caller's state_dict is left as it was"
    assert [torchvision_name(k) for k in fused.state_dict()] == keys
    x = torch.randn(2, 3, 32, 32, generator=generator(seed))
    with torch.inference_mode():
        assert torch.equal(set_backend(fused.eval(), "reference")(x), source(x)), f"seed={seed}"
        torch.testing.assert_close(set_backend(fused, "fused")(x), source(x), **MODULE_TOL[torch.float32],
                                   msg=lambda m: f"seed={seed} {m}")
    other = fuse_dense_blocks(densenet(kind, seed + 2))
    other.load_state_dict(fused.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), fused.state_dict().values()))


def test_state_dict_errors():
    block = DenseConcatBlock.from_torchvision(_DenseBlock(2, 4, 2, 3, 0.0))
    state = block.state_dict()
    with pytest.raises(RuntimeError, match=r"both 'denselayer1.conv1.weight' and 'layers.0.conv1.weight'"):
        block.load_state_dict({**state, "denselayer1.conv1.weight": state["layers.0.conv1.weight"]})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "denselayer0.conv1.weight"'):
        block.load_state_dict({**state, "denselayer0.conv1.weight": state["layers.0.conv1.weight"]})


def test_from_torchvision_keeps_modules_modes_and_dtype():
    seed = new_seed()
    torch.manual_seed(seed)
    tv = _DenseBlock(num_layers=3, num_input_features=5, bn_size=2, growth_rate=3, drop_rate=0.0).double().eval()
    randomise_bn(tv, generator(seed), affine=True)
    tv.denselayer2.norm2.train()  # a mode of its own
    block = DenseConcatBlock.from_torchvision(tv)
    assert (block.in_channels, block.growth_rate, block.out_channels) == (5, 3, 14)
    for i, layer in enumerate(block.layers, 1):
        for name, child in layer.named_children():
            assert child is getattr(tv[f"denselayer{i}"], name)
    assert [name for name, m in block.named_modules() if m.training] == ["layers.1.norm2"]
    assert {p.dtype for p in block.parameters()} == {torch.float64}
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=generator(seed))
    with torch.no_grad():
        assert torch.equal(set_backend(block, "reference")(x), tv(x)), f"seed={seed}"


def edited_block(edit):
    block = _DenseBlock(num_layers=3, num_input_features=5, bn_size=2, growth_rate=3, drop_rate=0.0)
    edit(block)
    return block


# edit of a torchvision _DenseBlock(3 layers, 5 input channels, bn_size 2, growth 3) -> the error
REFUSALS = {
    "dropout": (lambda b: setattr(b.denselayer2, "drop_rate", 0.1), r"denselayer2 has drop_rate=0.1; .* no dropout"),
    "channels": (lambda b: setattr(b.denselayer3, "norm1", nn.BatchNorm2d(12)),
                 r"denselayer3.norm1 is BatchNorm2d\(12,.*expected BatchNorm2d\(11,"),
    "dilation": (lambda b: setattr(b.denselayer1, "conv2", nn.Conv2d(6, 3, 3, padding=2, dilation=2, bias=False)),
                 r"denselayer1.conv2 is Conv2d\(6, 3, .*dilation=\(2, 2\).*expected Conv2d\(6, 3,"),
    "bias": (lambda b: setattr(b.denselayer2, "conv1", nn.Conv2d(8, 6, 1)), r"denselayer2.conv1 is .*expected"),
    "activation": (lambda b: setattr(b.denselayer1, "relu2", nn.GELU()), r"denselayer1.relu2 is GELU\(.*expected ReLU"),
    "no running stats": (lambda b: setattr(b.denselayer1, "norm2", nn.BatchNorm2d(6, track_running_stats=False)),
                         r"denselayer1.norm2 is .*track_running_stats=False"),
    "extra module": (lambda b: b.denselayer2.add_module("attention", nn.Identity()),
                     r"denselayer2 has the modules \['attention', 'conv1'"),
    "not a layer": (lambda b: setattr(b, "denselayer1", nn.Identity()),
                    r"denselayer1 is not a torchvision _DenseLayer \('Identity' object has no attribute 'norm1'\)"),
    "bottleneck width": (lambda b: [setattr(b.denselayer1, name, m) for name, m in dict(
        conv1=nn.Conv2d(5, 4, 1, bias=False), norm2=nn.BatchNorm2d(4), conv2=nn.Conv2d(4, 3, 3, padding=1)).items()],
        r"denselayer1's bottleneck width 4 is not a multiple of its growth rate 3"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_from_torchvision_refuses_what_it_cannot_compute_exactly(case):
    edit, message = REFUSALS[case]
    with pytest.raises(ValueError, match=r"^block: " + message):
        DenseConcatBlock.from_torchvision(edited_block(edit))


@pytest.mark.parametrize("block", [nn.Sequential(nn.Conv2d(3, 3, 1)), nn.ModuleDict(),
                                   nn.ModuleDict({"denselayer2": nn.Identity()}), torch.zeros(1)],
                         ids=["sequential", "empty", "keys_from_2", "tensor"])
def test_from_torchvision_refuses_other_modules(block):
    with pytest.raises(ValueError, match=r"block must be a torchvision DenseNet _DenseBlock: .* got "):
        DenseConcatBlock.from_torchvision(block)


def test_fuse_dense_blocks_refusals_leave_the_model_unchanged():
    model = densenet("small", new_seed(), drop_rate=0.2)
    before = list(model.named_modules())
    with pytest.raises(ValueError, match=r"^model.features.denseblock1 cannot be swapped: block: denselayer1 has "
                                         r"drop_rate=0.2"):
        fuse_dense_blocks(model)
    assert list(model.named_modules()) == before
    with pytest.raises(ValueError, match=r"model is itself a dense block .* DenseConcatBlock.from_torchvision"):
        fuse_dense_blocks(model.features.denseblock2)
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        fuse_dense_blocks({})


def test_fuse_dense_blocks_without_dense_blocks_and_with_shared_ones():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    before = list(plain.named_modules())
    assert fuse_dense_blocks(plain) is plain and list(plain.named_modules()) == before
    block = _DenseBlock(2, 4, 2, 3, 0.0)
    model = nn.Sequential(block, nn.Sequential(block))
    fuse_dense_blocks(model)
    assert isinstance(model[0], DenseConcatBlock) and model[1][0] is model[0]
