"""Reference architectures written in this repo (torchvision is not a dependency).

``vgg16`` is the CIFAR VGG-16 with BatchNorm (Simonyan and Zisserman 2015; the variant of the
TropNNC experiments, §7.3 / Table 4): 13 conv layers and one Linear, 14.7 M parameters at 10
classes. ``resnet18`` follows He et al. 2016 (the torchvision layout: 7x7 stem, four stages of two
BasicBlocks, projection shortcuts with 1x1 conv + BN), 11.7 M parameters at 1000 classes. Used by
the compile benchmark and by tests as a realistic graph with residual adds and coupled BatchNorms.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG16_CONFIG", "BasicBlock", "ResNet", "VGG", "randomize_batchnorm_stats", "resnet18", "vgg16"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000,
                 width: int = 64, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(nn.Sequential(*(BasicBlock(cin if j == 0 else cout, cout,
                                                     2 if (i > 0 and j == 0) else 1)
                                          for j in range(n))))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> ResNet:
    """ResNet-18 (11.7 M parameters at the defaults)."""
    return ResNet((2, 2, 2, 2), num_classes, width, in_channels)


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """``features`` (conv 3x3 -> [BN] -> ReLU, "M" = 2x2 max pool), flatten, one Linear."""

    def __init__(self, config: tuple = VGG16_CONFIG, num_classes: int = 10, in_channels: int = 3,
                 batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(cin, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16(num_classes: int = 10, batch_norm: bool = True) -> VGG:
    """CIFAR VGG-16 (32x32 inputs; 14.7 M parameters at 10 classes with BatchNorm)."""
    return VGG(VGG16_CONFIG, num_classes, 3, batch_norm)


def randomize_batchnorm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, as after training.

    Fresh BatchNorms are the identity (mean 0, var 1, weight 1, bias 0), which would hide
    folding bugs; the variances stay near 1 so a deep network's activations stay in range.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.running_mean.numel()
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=gen))
                if m.affine:
                    m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model
