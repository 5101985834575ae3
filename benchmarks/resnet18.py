"""A torchvision-style ResNet-18 (children conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc;
BasicBlocks), written here so that the benchmarks need no torchvision: the backbone a user would
cut with :func:`eexit.nn.attach_exits`."""
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet18(nn.Module):
    """[N, 3, H, W] -> logits [N, num_classes]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        for i, w in enumerate(widths):
            c_in = 64 if i == 0 else widths[i - 1]
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        for m in self.children():
            x = m(x.flatten(1) if isinstance(m, nn.Linear) else x)
        return x
