"""EarlyExitNetwork and attach_exits on a user model."""

import pytest
import torch
from torch import nn

from eexit.nn import EarlyExitNetwork, attach_exits

from helpers import generator, new_seed
from infer_checks import check_infer_matches_simulation


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """torchvision's ResNet layout in miniature: conv1, bn1, relu, maxpool, layer1-4, avgpool, fc."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.layer3 = BasicBlock(16, 24, 2)
        self.layer4 = BasicBlock(24, 32, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wrapped(seed):
    torch.manual_seed(seed)
    backbone = TinyResNet().eval()
    net = attach_exits(backbone, ["layer1", "layer2", "layer3"], num_classes=10,
                       example_input=torch.zeros(1, 3, 16, 16))
    for e in net.exits[:-1]:  # spread the confidences of the fresh heads
        with torch.no_grad():
            e.head[-1].weight.mul_(8.0)
    return backbone, net.eval()


def test_attach_exits_keeps_the_backbone_and_adds_heads():
    seed = new_seed()
    backbone, net = wrapped(seed)
    x = torch.randn(4, 3, 16, 16, generator=generator(seed))
    with torch.no_grad():
        outs = net(x)
        assert len(outs) == 4 and all(o.shape == (4, 10) for o in outs)
        torch.testing.assert_close(outs[-1], backbone(x), rtol=0, atol=0)  # the last exit is the model itself
    assert [e.head[-1].in_features for e in net.exits[:-1]] == [8, 16, 24]
    assert net.stages[1].body.layer2 is backbone.layer2  # shared modules, not copies
    assert net.backbone is backbone and "backbone" not in dict(net.named_children())


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_infer_matches_simulation_and_is_batch_invariant(criterion, backend):
    seed = new_seed()
    _, net = wrapped(seed)
    net.set_backend(backend)
    x = torch.randn(30, 3, 16, 16, generator=generator(seed))
    got, thr = check_infer_matches_simulation(net, x, criterion, seed)
    with torch.inference_mode():
        for i in (0, 7, 29):
            one = net.infer(x[i: i + 1], thr, criterion)
            assert one.exit_index.item() == got.exit_index[i].item() and one.pred.item() == got.pred[i].item()


def test_infer_without_inference_mode_and_on_empty_batches():
    _, net = wrapped(new_seed())
    out = net.infer(torch.randn(3, 3, 16, 16), 0.9)  # grad mode on: infer turns it off itself
    assert not out.logits.requires_grad and out.logits.shape == (3, 10)
    empty = net.infer(torch.randn(0, 3, 16, 16), 0.9)
    assert empty.logits.shape == (0, 10)


def test_bad_construction():
    with pytest.raises(ValueError, match="as many"):
        EarlyExitNetwork([nn.Identity(), nn.Identity()], [nn.Identity()])
    backbone = TinyResNet()
    ex = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"'layer9' is not a submodule of TinyResNet; did you mean"):
        attach_exits(backbone, ["layer9"], 10, ex)
    with pytest.raises(ValueError, match=r"order forward runs them: \['layer1', 'layer3'\]"):
        attach_exits(backbone, ["layer3", "layer1"], 10, ex)
    with pytest.raises(ValueError, match="nothing of the model is left"):
        attach_exits(backbone, ["fc"], 10, ex)
    with pytest.raises(ValueError, match="names a module twice"):
        attach_exits(backbone, ["layer1", "layer1"], 10, ex)
    with pytest.raises(ValueError, match="non-empty list"):
        attach_exits(backbone, "layer1", 10, ex)
    with pytest.raises(ValueError, match=r"'layer1.conv1' is called 0 times"):  # inside another cut
        attach_exits(backbone, ["layer1", "layer1.conv1"], 10, ex)
    with pytest.raises(ValueError, match="example_input must be a tensor batch"):
        attach_exits(backbone, ["layer1"], 10, torch.zeros(0, 3, 16, 16))
    with pytest.raises(ValueError, match="num_classes is 7 but the model returns 10"):
        attach_exits(backbone, ["layer1"], 7, ex)
    with pytest.raises(ValueError, match="tokens must be one of"):
        attach_exits(backbone, ["layer1"], 10, ex, tokens="first")
    _, net = wrapped(0)
    with pytest.raises(ValueError, match="one per exit"):
        net.infer(torch.randn(2, 3, 16, 16), [0.5, 0.5])


def test_custom_head_gets_the_example_feature():
    backbone = TinyResNet()
    seen = []

    def head(feature, k):
        seen.append(tuple(feature.shape))
        return nn.Sequential(nn.Conv2d(feature.shape[1], 4, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, k))

    net = attach_exits(backbone, ["layer2"], 10, torch.zeros(1, 3, 16, 16), head=head)
    assert seen == [(2, 16, 4, 4)]  # a batch of one is run as two, to tell the batch dimension
    assert net.exits[0].head[0].in_channels == 16
    assert net(torch.randn(2, 3, 16, 16))[0].shape == (2, 10)
    with pytest.raises(ValueError, match="head must return an nn.Module"):
        attach_exits(backbone, ["layer2"], 10, torch.zeros(1, 3, 16, 16), head=lambda f, k: 3)
