"""Reference architectures written in this repo (torchvision is not a dependency).

:data:`ZOO` holds small models with the patterns of real architectures that passes must handle
(or decline, saying why): MobileNetV2's inverted residual (ReLU6, depthwise), timm's BatchNormAct
with its shape assert, DenseNet's BatchNorm after a concatenation, SqueezeNet's fire module,
RegNet's module names with ``-``, a ViT block (``torch._assert``, GELU, attention), ResNeXt's
grouped convolutions, ShuffleNet's channel shuffle and Inception's branches. Each entry builds
``(model, example_inputs)`` in eval mode with random BatchNorm statistics, deterministically from
``width`` and ``seed``, without touching torch's global RNG.

``vgg16`` is the CIFAR VGG-16 with BatchNorm (Simonyan and Zisserman 2015; the variant of the
TropNNC experiments, §7.3 / Table 4): 13 conv layers and one Linear, 14.7 M parameters at 10
classes. ``resnet18`` follows He et al. 2016 (the torchvision layout: 7x7 stem, four stages of two
BasicBlocks, projection shortcuts with 1x1 conv + BN), 11.7 M parameters at 1000 classes. Used by
the compile benchmark and by tests as a realistic graph with residual adds and coupled BatchNorms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VGG16_CONFIG", "ZOO", "BasicBlock", "BatchNormAct2d", "DenseBlock", "Fire", "Inception",
           "InvertedResidual", "ResNeXtBlock", "ResNet", "ShuffleDown", "ShuffleUnit", "VGG", "ViTBlock",
           "randomize_batchnorm_stats", "resnet18", "vgg16"]


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


# --- the architecture zoo ----------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """conv (no bias) -> BatchNorm -> activation, as torchvision's Conv2dNormActivation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)
                      else act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 (Sandler et al. 2018): 1x1 expand -> ReLU6 -> 3x3 depthwise -> ReLU6 -> 1x1
    project (linear), with the residual when the shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(conv_bn(cin, hidden, 1, act=nn.ReLU6),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: asserts the rank on ``x.ndim`` (a metadata read of the conv output),
    then ``F.batch_norm`` on the stored statistics, then the activation."""

    def __init__(self, num_features: int, act: type[nn.Module] = nn.SiLU):
        super().__init__(num_features)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, 0.1 if self.momentum is None else self.momentum, self.eps)
        return self.act(x)


class TimmConvBnAct(nn.Module):
    """EfficientNet / MobileNetV3-style stem and depthwise-separable block built on BatchNormAct2d,
    with hard-swish and SiLU, a squeeze-excite gate (sigmoid) and a residual."""

    def __init__(self, width: int):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(width, nn.Hardswish)
        self.conv_dw = nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False)
        self.bn2 = BatchNormAct2d(width, nn.SiLU)
        self.se_reduce = nn.Conv2d(width, max(1, width // 4), 1)
        self.se_expand = nn.Conv2d(max(1, width // 4), width, 1)
        self.conv_pw = nn.Conv2d(width, width, 1, bias=False)
        self.bn3 = BatchNormAct2d(width, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        y = self.bn2(self.conv_dw(x))
        gate = self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))).sigmoid()
        return x + self.bn3(self.conv_pw(y * gate))


class DenseBlock(nn.Module):
    """DenseNet (Huang et al. 2017): each layer is BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv
    on the concatenation of all earlier features; the first BN follows a concatenation (not
    foldable, and listed as such), the second follows a conv."""

    def __init__(self, cin: int, growth: int, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(layers):
            c = cin + i * growth
            self.layers.append(nn.Sequential(
                nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, 2 * growth, 1, bias=False),
                nn.BatchNorm2d(2 * growth), nn.ReLU(inplace=True),
                nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016): squeeze 1x1 -> ReLU, then 1x1 and 3x3
    expansions with ReLU, concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck (Xie et al. 2017): 1x1 -> grouped 3x3 (cardinality 4) -> 1x1, each with
    BatchNorm, ReLU between, a projection shortcut with BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 4):
        super().__init__()
        mid = groups * max(1, cout // (2 * groups))
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, written as torchvision does (shape reads, view, transpose)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018), stride 1: split the channels, transform one half
    (1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> 1x1 -> BN -> ReLU), concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch2 = nn.Sequential(conv_bn(half, half, 1),
                                     conv_bn(half, half, 3, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


class ShuffleDown(nn.Module):
    """ShuffleNetV2's downsampling unit: two stride-2 branches (depthwise 3x3 -> BN -> 1x1 ->
    BN -> ReLU; 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> 1x1 -> BN -> ReLU), concatenated
    and shuffled; with the stride-1 units after it, every branch's channels end up interleaved."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=None),
                                     conv_bn(cin, half, 1))
        self.branch2 = nn.Sequential(conv_bn(cin, half, 1),
                                     conv_bn(half, half, 3, 2, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat((self.branch1(x), self.branch2(x)), dim=1), 2)


class Inception(nn.Module):
    """GoogLeNet's inception module (Szegedy et al. 2015): 1x1, 1x1 -> 3x3, 1x1 -> 5x5 (as 3x3)
    and 3x3 max pool -> 1x1 branches, each conv with BatchNorm and ReLU, concatenated."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.branch1 = conv_bn(cin, width, 1)
        self.branch2 = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3))
        self.branch3 = nn.Sequential(conv_bn(cin, width // 2 or 1, 1), conv_bn(width // 2 or 1, width, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class ViTBlock(nn.Module):
    """A ViT encoder block (Dosovitskiy et al. 2021) as torchvision writes it: ``torch._assert`` on
    the input rank, LayerNorm, multi-head self-attention (written out: q, k, v, softmax), residual,
    LayerNorm, Linear -> GELU -> Linear, residual."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {x.shape}")
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).reshape(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln_2(x))


class ViTTiny(nn.Module):
    """Patch embedding (conv, stride = patch), two ViT blocks, class token read-out."""

    def __init__(self, width: int, classes: int = 5):
        super().__init__()
        self.dim = 2 * width
        self.conv_proj = nn.Conv2d(3, self.dim, 4, 4)
        self.blocks = nn.Sequential(ViTBlock(self.dim), ViTBlock(self.dim))
        self.head = nn.Linear(self.dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        torch._assert(h % 4 == 0, "image height must be a multiple of the patch")
        torch._assert(w % 4 == 0, "image width must be a multiple of the patch")
        x = self.conv_proj(x).reshape(n, self.dim, -1).permute(0, 2, 1)
        return self.head(self.blocks(x)[:, 0])


class _Net(nn.Module):
    """``stem -> body -> global pool -> flatten -> Linear``; submodules named as given (names with
    ``-``, as RegNet's ``block1-0``, are added with ``add_module``). ``pool``: ``"avg"``, ``"max"``
    (AdaptiveMaxPool2d) or ``"amax"`` (``x.amax((2, 3))``)."""

    def __init__(self, stem: nn.Module, body: list[tuple[str, nn.Module]], channels: int,
                 pool: str = "avg", classes: int = 5):
        super().__init__()
        self.stem = stem
        self.names = [name for name, _ in body]
        for name, module in body:
            self.add_module(name, module)
        self.global_max = pool == "amax"  # x.amax((2, 3)), as a global max pool is often written
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.names:
            x = getattr(self, name)(x)
        return self.fc(x.amax((2, 3)) if self.global_max else torch.flatten(self.pool(x), 1))


def _mobilenet_v2(w: int) -> nn.Module:
    return _Net(conv_bn(3, w, 3, 2, act=nn.ReLU6),
                [("ir1", InvertedResidual(w, w)), ("ir2", InvertedResidual(w, 2 * w, 2)),
                 ("ir3", InvertedResidual(2 * w, 2 * w)), ("last", conv_bn(2 * w, 4 * w, 1, act=nn.ReLU6))],
                4 * w)


def _timm_bn_act(w: int) -> nn.Module:
    return _Net(TimmConvBnAct(w), [("head", nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False),
                                                          BatchNormAct2d(2 * w, nn.SiLU)))], 2 * w)


def _densenet(w: int) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1))
    c1 = w + 3 * (w // 2)
    transition = nn.Sequential(nn.BatchNorm2d(c1), nn.ReLU(inplace=True), nn.Conv2d(c1, w, 1, bias=False),
                               nn.AvgPool2d(2, 2))
    return _Net(stem, [("denseblock1", DenseBlock(w, w // 2)), ("transition1", transition),
                       ("denseblock2", DenseBlock(w, w // 2, 2)),
                       ("norm5", nn.BatchNorm2d(w + 2 * (w // 2)))], w + 2 * (w // 2))


def _squeezenet(w: int) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 2 * w, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True))
    return _Net(stem, [("fire2", Fire(2 * w, w // 2, w)), ("fire3", Fire(2 * w, w // 2, w)),
                       ("pool", nn.MaxPool2d(3, 2, ceil_mode=True)), ("fire4", Fire(2 * w, w, 2 * w))],
                4 * w, pool="max")


def _regnet(w: int) -> nn.Module:
    return _Net(conv_bn(3, w, 3, 2),
                [("block1-0", ResNeXtBlock(w, 2 * w, 2, groups=2)),
                 ("block1-1", ResNeXtBlock(2 * w, 2 * w, 1, groups=2)),
                 ("block2-0", ResNeXtBlock(2 * w, 2 * w, 2, groups=2))], 2 * w)


def _resnext(w: int) -> nn.Module:
    return _Net(nn.Sequential(conv_bn(3, w, 3, 1), nn.MaxPool2d(2)),
                [("layer1", ResNeXtBlock(w, 4 * w, 1)), ("layer2", ResNeXtBlock(4 * w, 4 * w, 2))], 4 * w)


def _shufflenet(w: int) -> nn.Module:
    return _Net(nn.Sequential(conv_bn(3, 2 * w, 3, 2), nn.MaxPool2d(3, 2, 1)),
                [("stage2", nn.Sequential(ShuffleUnit(2 * w), ShuffleUnit(2 * w))),
                 ("stage3", nn.Sequential(ShuffleDown(2 * w, 4 * w), ShuffleUnit(4 * w)))], 4 * w,
                pool="amax")


def _inception(w: int) -> nn.Module:
    return _Net(nn.Sequential(conv_bn(3, w, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True)),
                [("inception3a", Inception(w, w)), ("maxpool3", nn.MaxPool2d(2, 2)),
                 ("inception3b", Inception(4 * w, w))], 4 * w)


def _resnet(w: int) -> nn.Module:
    return ResNet((1, 1, 1, 1), num_classes=5, width=w)


# name -> (builder of the model from a width, input shape)
_ZOO_SPECS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "mobilenet_v2_block": (_mobilenet_v2, (2, 3, 16, 16)),
    "timm_bn_act": (_timm_bn_act, (2, 3, 16, 16)),
    "densenet_block": (_densenet, (2, 3, 16, 16)),
    "squeezenet_fire": (_squeezenet, (2, 3, 33, 33)),
    "regnet_names": (_regnet, (2, 3, 16, 16)),
    "resnext_grouped": (_resnext, (2, 3, 16, 16)),
    "shufflenet_shuffle": (_shufflenet, (2, 3, 16, 16)),
    "inception_branches": (_inception, (2, 3, 24, 24)),
    "vit_block": (ViTTiny, (2, 3, 16, 16)),
    "resnet": (_resnet, (2, 3, 32, 32)),
}


def _zoo_entry(name: str) -> Callable[..., tuple[nn.Module, tuple]]:
    build, shape = _ZOO_SPECS[name]

    def make(width: int = 8, seed: int = 0) -> tuple[nn.Module, tuple]:
        """``(model, (x,))``: the model in eval mode with random BatchNorm statistics."""
        if width < 2 or width % 2:
            raise ValueError(f"zoo model {name}: width must be an even int >= 2, got {width}")
        with torch.random.fork_rng(devices=[]):  # deterministic, and the caller's RNG untouched
            torch.manual_seed(seed)
            model = build(width)
        randomize_batchnorm_stats(model, seed)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 1))
        return model.eval(), (x,)

    make.__name__ = make.__qualname__ = name
    return make


# The architecture zoo: name -> make(width=8, seed=0) -> (model in eval mode, example inputs).
ZOO: dict[str, Callable[..., tuple[nn.Module, tuple]]] = {name: _zoo_entry(name) for name in _ZOO_SPECS}
