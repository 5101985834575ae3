"""attach_exits on torchvision's own architectures (weights=None): cuts at dotted names, the last
exit equal to the model, infer equal to the dense simulation and batch-invariant."""
import copy

import pytest
import torch
from torch import nn

from eexit.nn import attach_exits, default_head, fuse_dense_blocks

from helpers import generator, new_seed
from infer_checks import check_infer_matches_simulation

models = pytest.importorskip("torchvision.models")


def small_vit(num_classes):
    return models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32,
                                    mlp_dim=64, num_classes=num_classes)


HEAD_TOL = 5e-3  # relative to the largest logit, see spread_head

# name: (builder, cuts); every model takes 3 x 32 x 32 images here
ARCHITECTURES = {
    "resnet18": (models.resnet18, ["layer1", "layer2.1", "layer3"]),
    "mobilenet_v3_small": (models.mobilenet_v3_small, ["features.1", "features.3", "features.5"]),
    "densenet121": (models.densenet121, ["features.denseblock1", "features.denseblock2", "features.transition3"]),
    "efficientnet_b0": (models.efficientnet_b0, ["features.1", "features.2.1", "features.3"]),
    "convnext_tiny": (models.convnext_tiny, ["features.1", "features.3.1", "features.5"]),
    "vit": (small_vit, ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"]),
}


def randomise_norms(model, gen):
    """BatchNorm statistics and norm affines away from the identity, so a dropped or repeated
    normalisation cannot go unnoticed."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


class Standardise(nn.Module):
    def __init__(self, feature):
        super().__init__()
        self.register_buffer("mean", feature.mean(0))
        self.register_buffer("std", feature.std(0) + 1e-2 * feature.std(0).mean() + 1e-12)

    def forward(self, x):
        return (x - self.mean) / self.std


def spread_head(feature, num_classes):
    """The default head after a standardisation with the example batch's statistics: randomly
    initialised MobileNets and EfficientNets make nearly the same features for every sample, and
    exits need spread-out scores to be tested. The standardisation magnifies float32 rounding
    differences between batch sizes (relative 1e-7 of a feature over a spread down to 1e-5 of it)
    about a thousandfold: hence HEAD_TOL."""
    head = default_head(feature, num_classes)
    with torch.no_grad():
        [m for m in head.modules() if isinstance(m, nn.Linear)][-1].weight.mul_(3.0)
    return nn.Sequential(Standardise(feature), head)


def build(name, seed, fused=False):
    builder, cuts = ARCHITECTURES[name]
    torch.manual_seed(seed)
    model = builder(num_classes=10)
    randomise_norms(model, generator(seed))
    model.eval()
    if fused:
        fuse_dense_blocks(model)
    example = torch.randn(8, 3, 32, 32, generator=generator(seed + 1))
    return model, attach_exits(model, cuts, num_classes=10, example_input=example, head=spread_head).eval()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_exits_on_torchvision_models(name):
    seed = new_seed()
    model, net = build(name, seed)
    x = torch.randn(8, 3, 32, 32, generator=generator(seed))
    with torch.no_grad():
        outs = net(x)
        want = model(x)
    assert len(outs) == len(ARCHITECTURES[name][1]) + 1 and all(o.shape == (8, 10) for o in outs)
    torch.testing.assert_close(outs[-1], want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=f"seed={seed}")
    got, thr = check_infer_matches_simulation(net, x, "entropy", seed, tol=HEAD_TOL)
    assert len(set(got.exit_index.tolist())) > 1, f"seed={seed}: the check needs samples at several exits"
    with torch.inference_mode():
        for i in (0, 5):  # batch-invariant: a sample alone takes the same exit with the same logits
            one = net.infer(x[i: i + 1], thr, "entropy")
            assert one.exit_index.item() == got.exit_index[i].item(), f"seed={seed}"
            torch.testing.assert_close(one.logits[0], got.logits[i], rtol=HEAD_TOL,
                                       atol=HEAD_TOL * got.logits.abs().max().item())


def test_densenet_with_fused_dense_blocks_and_a_cut_at_a_block():
    seed = new_seed()
    model, net = build("densenet121", seed, fused=True)
    ref, _ = build("densenet121", seed)
    x = torch.randn(4, 3, 32, 32, generator=generator(seed))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[-1], ref(x), rtol=1e-4, atol=1e-4, msg=f"seed={seed}")
    check_infer_matches_simulation(net, x, "confidence", seed, tol=HEAD_TOL)


def test_train_mode_graphs_and_gradients_follow_the_model():
    """EfficientNet's stochastic depth reads self.training in Python: the stages run its train-mode
    graph in train mode, so the network trains as the model does (same randomness, same gradients)."""
    seed = new_seed()
    model, net = build("efficientnet_b0", seed)
    twin = copy.deepcopy(model).train()
    net.train()
    assert any(s._train_graph is not None for s in net.stages)
    x = torch.randn(4, 3, 32, 32, generator=generator(seed))
    torch.manual_seed(seed)
    want = twin(x)
    torch.manual_seed(seed)
    got = net(x)[-1]
    torch.testing.assert_close(got, want, msg=f"seed={seed}")
    got.square().sum().backward()
    want.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"{name}, seed={seed}")
