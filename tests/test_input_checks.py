"""Input checks at the boundary of every early-exit model's forward and infer (EarlyExitModel.check_input),
infer's refusal of train mode, and compact's refusal of tensors with different row counts."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import eexit
from eexit import ops, reference
from eexit.models import MSDNet, b_alexnet, b_lenet, b_resnet110
from eexit.nn import ConvBNReLU, EarlyExitNetwork, attach_exits, pool_linear_head

from helpers import generator, new_seed, randomise_bn


def small_msdnet() -> MSDNet:
    """The smallest MSDNet with the CIFAR stem and classifiers (3 scales: 32 px)."""
    return MSDNet(2, 4, 1, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=5, dataset="cifar")


def hand_built(**declared) -> EarlyExitNetwork:
    return EarlyExitNetwork([ConvBNReLU(3, 8), ConvBNReLU(8, 8, stride=2)],
                            [pool_linear_head(8, 5), pool_linear_head(8, 5)], **declared)


def attached() -> EarlyExitNetwork:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    return attach_exits(backbone, ["2"], 5, torch.zeros(1, 3, 16, 16))


# name -> (build, the input shape per sample it takes, how messages name it, spatial size fixed)
MODELS = {
    "msdnet": (small_msdnet, (3, 32, 32), r"MSDNet \(CIFAR\)", True),
    "b_lenet": (b_lenet, (1, 28, 28), r"B-LeNet \(MNIST\)", True),
    "hand": (lambda: hand_built(input_shape=(3, None, None), display_name="my net"), (3, 12, 12), "my net", False),
    "attach": (attached, (3, 16, 16), "Sequential with exits", False),
}


@pytest.fixture(params=list(MODELS), scope="module")
def case(request):
    seed = new_seed()
    build, shape, name, fixed = MODELS[request.param]
    torch.manual_seed(seed)
    model = build().eval()
    randomise_bn(model, generator(seed))
    return model, shape, name, fixed


def expected(shape) -> str:
    return r"\[B, " + ", ".join(str(d) for d in shape) + r"\]"


def loose(shape, fixed) -> str:
    """The expected shape as messages write it: free sizes as *."""
    return r"\[B, " + ", ".join(str(d) if fixed or i == 0 else r"\*" for i, d in enumerate(shape)) + r"\]"


def calls(model, x):
    """forward, and infer (eval mode), on x."""
    return [lambda: model(x), lambda: model.infer(x, 0.5)]


def test_numpy_input(case):
    model, shape, name, _ = case
    for call in calls(model, np.zeros((2, *shape), dtype=np.float32)):
        with pytest.raises(TypeError, match=rf"^x must be a torch\.Tensor .* for this {name}, got numpy\.ndarray; "
                                             r"convert it with torch\.as_tensor\(x, dtype=torch\.float32\)"):
            call()


def test_missing_batch_dimension(case):
    model, shape, name, fixed = case
    got = r"\[" + ", ".join(map(str, shape)) + r"\]"
    for call in calls(model, torch.zeros(shape)):
        with pytest.raises(ValueError, match=rf"^x must be {loose(shape, fixed)} for this {name}, got {got}; "
                                             r"one sample\? add the batch dimension: x\.unsqueeze\(0\)"):
            call()


def test_wrong_channels(case):
    model, shape, name, fixed = case
    c, h, w = shape
    for call in calls(model, torch.zeros(2, c + 1, h, w)):
        with pytest.raises(ValueError, match=rf"^x must be {loose(shape, fixed)} for this {name}, "
                                             rf"got \[2, {c + 1}, {h}, {w}\]$"):
            call()
    for call in calls(model, torch.zeros(2, h, w, c)):  # images as PIL / numpy lay them out
        with pytest.raises(ValueError, match=r"channels last\? they go on dim 1: x\.permute\(0, 3, 1, 2\)"):
            call()


def test_spatial_size(case):
    model, shape, name, fixed = case
    x = torch.zeros(2, shape[0], 64, 64)
    if not fixed:  # sizes the model does not fix stay free
        with torch.inference_mode():
            assert len(model(x)) == 2 and model.infer(x, 0.5).logits.shape == (2, 5)
        return
    for call in calls(model, x):
        with pytest.raises(ValueError, match=rf"^x must be {expected(shape)} for this {name}, "
                                             rf"got \[2, {shape[0]}, 64, 64\]$"):
            call()


def test_msdnet_message_as_a_new_user_reads_it():
    with pytest.raises(ValueError, match=r"^x must be \[B, 3, 32, 32\] for this MSDNet \(CIFAR\), got \[3, 32, 32\]"):
        small_msdnet().eval()(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"got \[1, 3, 28, 28\]$"):  # a size its classifiers would also take
        small_msdnet().eval()(torch.zeros(1, 3, 28, 28))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_dtype_unlike_the_parameters(case, dtype):
    model, shape, name, _ = case
    got = str(dtype).replace("torch.", "")
    for call in calls(model, torch.zeros(2, *shape, dtype=dtype)):
        with pytest.raises(TypeError, match=rf"^x must be float32 like the parameters of this {name}, got {got}; "
                                            r"convert it with x\.to\(torch\.float32\)"):
            call()


def test_device_unlike_the_parameters(case):
    model, shape, name, _ = case
    for call in calls(model, torch.zeros(2, *shape, device="meta")):
        with pytest.raises(ValueError, match=rf"^x is on meta but the parameters of this {name} are on cpu; "
                                             r"move it with x\.to\('cpu'\)"):
            call()


def test_infer_in_train_mode(case):
    model, shape, _, _ = case
    model.train()
    try:
        with pytest.raises(RuntimeError, match=r"^infer needs eval mode: call model\.eval\(\) first; in train mode "
                                               r"BatchNorm would mix samples and update its statistics"):
            model.infer(torch.zeros(4, *shape), 0.5)
    finally:
        model.eval()


def test_good_input_passes(case):
    model, shape, _, _ = case
    x = torch.randn(3, *shape, generator=generator(new_seed()))
    with torch.inference_mode():
        want = model(x)
        got = model(x.contiguous(memory_format=torch.channels_last))
        out = model.infer(x, [math.inf, 0.0])
    torch.testing.assert_close(got[-1], want[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, want[-1], atol=1e-5, rtol=1e-5)


def test_refused_calls_change_nothing(case):
    model, shape, _, _ = case
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = [m.training for m in model.modules()]
    bad = [np.zeros((2, *shape), dtype=np.float32), torch.zeros(shape), torch.zeros(2, shape[0] + 1, *shape[1:]),
           torch.zeros(2, *shape, dtype=torch.float64), torch.zeros(2, *shape, dtype=torch.float16),
           torch.zeros(2, *shape, device="meta")]
    for x in bad:
        for call in calls(model, x):
            with pytest.raises((TypeError, ValueError)):
                call()
    model.train()
    with pytest.raises(RuntimeError, match="infer needs eval mode"):
        model.infer(torch.randn(4, *shape), 0.5)
    model.eval()
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
    assert changed == [], f"refused calls changed {changed}"
    assert [m.training for m in model.modules()] == modes


def test_declared_inputs():
    assert small_msdnet().input_shape == (3, 32, 32)
    imagenet = MSDNet(1, 4, 1, 1, "even", 4, [1, 2, 4, 4], [1, 2, 4, 4], num_classes=3, dataset="imagenet")
    assert (imagenet.input_shape, imagenet.display_name) == ((3, 224, 224), "MSDNet (ImageNet)")
    # two CIFAR scales leave the classifiers 2x2 at 32 px: the model is for some other size, left free
    two = MSDNet(1, 4, 1, 1, "even", 4, [1, 2], [1, 2], num_classes=3, dataset="cifar")
    assert two.input_shape == (3, None, None)
    for build, shape in [(b_lenet, (1, 28, 28)), (b_alexnet, (3, 32, 32)), (b_resnet110, (3, 32, 32))]:
        net = build()
        assert (net.input_shape, net.input_dtype) == (shape, "parameters")
    assert (attached().input_shape, attached().input_dtype) == ((3, None, None), "parameters")
    assert (hand_built().input_shape, hand_built().input_dtype) == (None, None)
    with pytest.raises(ValueError, match=r"input_shape must be a tuple of sizes per sample"):
        hand_built(input_shape=(3, 0, None))
    with pytest.raises(ValueError, match=r"input_dtype must be None, 'parameters' or a torch\.dtype"):
        hand_built(input_dtype="float32")


def test_undeclared_network_takes_tensors_or_lists_of_them():
    """Built by hand without input_shape: a tensor or a list/tuple of tensors (a multi-scale input),
    batches of the same samples; floating ones in the parameters' dtype, others unchecked."""
    net = EarlyExitNetwork([nn.Identity()], [nn.Sequential(nn.Flatten(), nn.Linear(6, 2))]).eval()
    assert net(torch.zeros(2, 6))[0].shape == (2, 2)
    with pytest.raises(TypeError, match=r"^x must be a torch\.Tensor or a non-empty list/tuple of tensors for this "
                                        r"EarlyExitNetwork, got numpy\.ndarray"):
        net(np.zeros((2, 6)))
    with pytest.raises(TypeError, match=r"^x must be a torch\.Tensor or a non-empty list/tuple of tensors for this "
                                        r"EarlyExitNetwork, got list"):
        net([])
    with pytest.raises(TypeError, match=r"^x\[1\] must be a torch\.Tensor for this EarlyExitNetwork, got str"):
        net([torch.zeros(2, 6), "b"])
    with pytest.raises(ValueError, match=r"^x\[1\] has 3 samples \(dim 0\) but x\[0\] has 2"):
        net.infer([torch.zeros(2, 6), torch.zeros(3, 6)], 0.5)
    with pytest.raises(ValueError, match=r"^x must be a batch \(samples on dim 0\) for this EarlyExitNetwork, got a "
                                         r"scalar"):
        net(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"^x\[1\] must be float32 like the parameters of this EarlyExitNetwork, "
                                        r"got float64"):
        net([torch.zeros(2, 6), torch.zeros(2, 6, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"^x\[0\] is on meta but the parameters"):
        net([torch.zeros(2, 6, device="meta")])
    emb = EarlyExitNetwork([nn.Embedding(10, 6)], [nn.Sequential(nn.Flatten(), nn.Linear(6, 2))]).eval()
    assert emb.infer(torch.tensor([[1], [2]]), 0.5).logits.shape == (2, 2)  # token ids: not floating, not checked


def test_attach_exits_keeps_a_non_floating_example_dtype():
    backbone = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 3))
    net = attach_exits(backbone, ["0"], 3, torch.zeros(1, 5, dtype=torch.long)).eval()
    assert (net.input_shape, net.input_dtype) == ((None,), torch.int64)  # dim 1 is a length here, free
    assert net.infer(torch.zeros(2, 5, dtype=torch.long), 0.5).logits.shape == (2, 3)
    with pytest.raises(TypeError, match=r"^x must be int64 for this Sequential with exits, got float32"):
        net(torch.zeros(2, 5))


def test_autocast_input_in_the_autocast_dtype_passes():
    model = b_lenet().eval()
    x = torch.zeros(2, 1, 28, 28, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        assert model.infer(x, 0.5).logits.dtype == torch.bfloat16


def test_compiled_model_checks_at_the_boundary():
    """eexit.compile compiles the stages; the checks run before them, in Python."""
    torch._dynamo.reset()
    try:
        net = eexit.compile(hand_built(input_shape=(3, None, None)).eval(), backend="eager",
                            example_input=torch.randn(2, 3, 8, 8))
        with pytest.raises(ValueError, match=r"^x must be \[B, 3, \*, \*\] for this EarlyExitNetwork, got \[3, 8, 8\]"):
            net.infer(torch.zeros(3, 8, 8), 0.5)
        with pytest.raises(TypeError, match="got float64"):
            net(torch.zeros(2, 3, 8, 8, dtype=torch.float64))
        with torch.inference_mode():
            assert net.infer(torch.randn(5, 3, 8, 8), 0.5).logits.shape == (5, 5)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("fn", [ops.compact, reference.compact, lambda t, i: torch.ops.eexit.compact(list(t), i)],
                         ids=["fused", "reference", "C++ op"])
def test_compact_refuses_different_row_counts(fn):
    a, b = torch.randn(5, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"^compact: tensors\[1\] has 4 rows but tensors\[0\] has 5"):
        fn([a, b], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^compact: tensors\[2\] has 4 rows but tensors\[0\] has 5"):
        fn((a, a, b), torch.tensor([], dtype=torch.long))
    assert [t.shape for t in fn([a, a[:, :1]], torch.tensor([4, 0]))] == [(2, 3), (2, 1)]


def test_compact_fake_implementation_refuses_different_row_counts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b, index = torch.empty(5, 3), torch.empty(4, 3), torch.zeros(2, dtype=torch.long)
        with pytest.raises(ValueError, match=r"compact: tensors\[1\] has 4 rows but tensors\[0\] has 5"):
            torch.ops.eexit.compact.default([a, b], index)
