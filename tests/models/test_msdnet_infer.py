"""MSDNet.infer: real sample-level early exit equals the dense simulation, batch-invariant."""
import math

import pytest
import torch

from eexit.models import MSDNet, msdnet_cifar_anytime

from helpers import generator, new_seed, randomise_bn
from infer_checks import check_infer_matches_simulation, thresholds_between_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def small_msdnet(seed):
    torch.manual_seed(seed)
    model = MSDNet(4, 8, 2, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=10, dataset="cifar").eval()
    randomise_bn(model, generator(seed))
    for head in model.classifier:  # spread-out confidences
        with torch.no_grad():
            head.linear.weight.mul_(20.0)
    return model


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_infer_matches_dense_simulation(criterion, backend):
    seed = new_seed()
    model = small_msdnet(seed).set_backend(backend)
    x = torch.randn(24, 3, 32, 32, generator=generator(seed))
    check_infer_matches_simulation(model, x, criterion, seed, tol=1e-4)


def test_infer_is_batch_invariant():
    seed = new_seed()
    model = small_msdnet(seed)
    x = torch.randn(12, 3, 32, 32, generator=generator(seed))
    with torch.inference_mode():
        thr = thresholds_between_scores(model(x), "confidence")
        whole = model.infer(x, thr)
        for i in range(x.shape[0]):
            one = model.infer(x[i: i + 1], thr)
            assert one.exit_index.item() == whole.exit_index[i].item(), f"seed={seed} row={i}"
            assert one.pred.item() == whole.pred[i].item()
            torch.testing.assert_close(one.logits[0], whole.logits[i], atol=1e-4, rtol=1e-4)


def test_later_blocks_never_run_once_everyone_left():
    model = small_msdnet(new_seed())
    ran = []
    for k, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, k=k: ran.append(k))
    with torch.inference_mode():
        out = model.infer(torch.randn(5, 3, 32, 32), [0.0, 0.5, 0.5, 0.5])
    assert ran == [0] and out.exit_index.eq(0).all()


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_batches(n):
    model = small_msdnet(new_seed())
    out = model.infer(torch.randn(n, 3, 32, 32), 0.5)  # infer turns grad off itself
    assert out.logits.shape == (n, 10) and out.exit_index.shape == (n,)
    with torch.inference_mode():
        assert model.infer(torch.randn(n, 3, 32, 32), 0.5, "confidence").logits.shape == (n, 10)


def test_anytime_preset_runs_every_exit():
    model = msdnet_cifar_anytime(100).eval()
    with torch.inference_mode():
        out = model.infer(torch.randn(3, 3, 32, 32), [math.inf] * 6 + [0.0])  # nobody leaves early
    assert out.exit_index.eq(6).all() and out.logits.shape == (3, 100)


def test_thresholds_must_fit_the_model():
    model = small_msdnet(0)
    with pytest.raises(ValueError, match="one per exit"):
        model.infer(torch.randn(2, 3, 32, 32), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"thresholds\[0\]"):
        model.infer(torch.randn(2, 3, 32, 32), [-0.5, 0.5, 0.5, 0.5])


def test_joint_loss_is_msdnets_sum_of_exit_cross_entropies_and_trains():
    import torch.nn.functional as F

    from eexit.losses import joint_loss

    model = small_msdnet(new_seed()).set_backend("reference").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    outs = model(x)
    loss = joint_loss(outs, y)
    torch.testing.assert_close(loss, sum(F.cross_entropy(o, y) for o in outs))
    torch.testing.assert_close(joint_loss(outs, y, [0.0, 1.0, 0.0, 2.0]),
                               F.cross_entropy(outs[1], y) + 2 * F.cross_entropy(outs[3], y))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("prune", ["max", "min"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_buffer_path_equals_the_reference(monkeypatch, prune, fmt):
    """The concat-buffer path (MSDLayer.forward_into; the Triton path's, forced here onto the folded
    convs) never concatenates per layer (ScaleConv.forward is the reference's cat) and equals the
    reference, scale drops and transitions included."""
    from eexit.models.msdnet import MSDLayer, ScaleConv

    seed = new_seed()
    torch.manual_seed(seed)
    model = MSDNet(3, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=10, dataset="cifar", prune=prune).eval()
    randomise_bn(model, generator(seed))
    x = torch.randn(3, 3, 32, 32, generator=generator(seed)).contiguous(memory_format=fmt)
    with torch.inference_mode():
        ref = model.set_backend("reference")(x)

        def no_cat(*args, **kwargs):
            raise AssertionError("the buffer path concatenated a layer")

        monkeypatch.setattr(ScaleConv, "forward", no_cat)
        monkeypatch.setattr(MSDLayer, "uses_buffers", lambda self, x: True)
        fused = model.set_backend("fused")(x)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"seed={seed} {m}")


def test_concat_order_is_defined_once(monkeypatch):
    """ScaleConv._convs is the one statement of the concat order: reversing it changes the
    reference's torch.cat and the buffer path alike, so the two stay equal."""
    from eexit.models.msdnet import MSDLayer, ScaleConv

    seed = new_seed()
    torch.manual_seed(seed)
    model = MSDNet(2, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=10, dataset="cifar").eval()
    randomise_bn(model, generator(seed))
    x = torch.randn(2, 3, 32, 32, generator=generator(seed))
    with torch.inference_mode():
        before = model.set_backend("reference")(x)
        original = ScaleConv._convs
        monkeypatch.setattr(ScaleConv, "_convs", lambda self, same, finer: original(self, same, finer)[::-1])
        ref = model.set_backend("reference")(x)
        monkeypatch.setattr(MSDLayer, "uses_buffers", lambda self, x: True)
        fused = model.set_backend("fused")(x)
    assert any(not torch.allclose(a, b) for a, b in zip(ref, before)), f"seed={seed}: the order did not matter"
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"seed={seed} {m}")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_scale_conv_forward_into_writes_its_window_only(fmt):
    """forward_into appends forward's new channels after c_same and leaves the rest of the buffer."""
    from eexit.models.msdnet import ScaleConv
    from eexit.nn import set_backend

    seed = new_seed()
    g = generator(seed)
    unit = set_backend(randomise_bn(ScaleConv(6, 4, 8, True, 2, 1), g).eval(), "fused")
    same = torch.randn(2, 6, 4, 6, generator=g).contiguous(memory_format=fmt)
    finer = torch.randn(2, 4, 8, 12, generator=g).contiguous(memory_format=fmt)
    same_buf = torch.full((2, 6 + 8 + 3, 4, 6), float("nan")).contiguous(memory_format=fmt)
    finer_buf = torch.full((2, 4 + 5, 8, 12), float("nan")).contiguous(memory_format=fmt)
    same_buf[:, :6], finer_buf[:, :4] = same, finer
    with torch.inference_mode():
        want = unit(same, finer)
        assert unit.forward_into(same_buf, 6, finer_buf, 4) == 6 + unit.added_channels == 14
    torch.testing.assert_close(same_buf[:, :14], want, atol=1e-4, rtol=1e-4, msg=lambda m: f"seed={seed} {m}")
    assert same_buf[:, 14:].isnan().all() and finer_buf[:, 4:].isnan().all()
    with pytest.raises(ValueError, match="finer-scale input"):
        unit.forward_into(same_buf, 6)


def test_folded_path_concatenates():
    """On the folded compute path (CPU fused) MSD layers concatenate: PyTorch's convolutions would
    copy a buffer's channel window before reading it, so buffers would only add copies."""
    from eexit.models.msdnet import MSDLayer

    model = MSDNet(2, 8, 2, 2, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=10, dataset="cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    layers = [m for m in model.modules() if isinstance(m, MSDLayer)]
    with torch.no_grad():
        assert not any(m.uses_buffers(x) for m in layers)
        model.set_backend("reference")
        assert not any(m.uses_buffers(x) for m in layers)
