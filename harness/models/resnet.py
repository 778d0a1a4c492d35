"""CIFAR-style ResNets: post-activation ResNet-18 and pre-activation ResNet-18/34.

Stem: 3x3 convolution with stride 1 and no max-pool; stages ``layer1``.. downsample by 2
from the second on; global average pooling makes every image size work, so the builders
ignore ``image_size``. ``block_layers`` are the last three stages (attention transfer;
at 32x32 they are 16, 8 and 4 pixels wide).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.models import register_model
from harness.models.base import Classifier
from harness.models.layers import conv3x3, conv_bn_relu, init_weights, pool_and_classify


class BasicBlock(nn.Module):
    """Post-activation block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        # A projection shortcut sees the pre-activated input, an identity one the raw input.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + shortcut


class ResNet(Classifier):
    """CIFAR-style ResNet with one stage ``layer{i}`` per width.

    Pre-activation nets end with stages ``bn`` (final BatchNorm, a feature layer) and
    ``relu`` before pooling, like the WideResNet.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        in_channels: int,
        num_classes: int,
        *,
        preact: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        block = PreActBlock if preact else BasicBlock
        if preact:
            self.stem: nn.Module = conv3x3(in_channels, widths[0])
        else:
            self.stem = conv_bn_relu(in_channels, widths[0], 3)
        layer_names = []
        in_planes = widths[0]
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True), start=1):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 1 and position == 0 else 1
                blocks.append(block(in_planes, width, stride))
                in_planes = width
            name = f"layer{index}"
            setattr(self, name, nn.Sequential(*blocks))
            layer_names.append(name)
        final_stages: tuple[str, ...] = ()
        if preact:
            self.bn = nn.BatchNorm2d(in_planes)
            self.relu = nn.ReLU(inplace=False)
            final_stages = ("bn", "relu")
        self.fc = nn.Linear(in_planes, num_classes)

        self.stages = ("stem", *layer_names, *final_stages)
        self.feature_layers = (*layer_names, *final_stages[:1])
        self.block_layers = tuple(layer_names[-3:])
        self.default_feature_layer = layer_names[-1]
        init_weights(self)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return pool_and_classify(z, self.fc)


@register_model("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """ResNet-18: post-activation BasicBlocks [2, 2, 2, 2], widths 64-512."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels, num_classes, **kwargs)


@register_model("preactresnet18", aliases=("preact-resnet18",))
def preactresnet18(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """Pre-activation ResNet-18: blocks [2, 2, 2, 2], widths 64-512."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels, num_classes, preact=True, **kwargs)


@register_model("preactresnet34", aliases=("preact-resnet34",))
def preactresnet34(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """Pre-activation ResNet-34: blocks [3, 4, 6, 3], widths 64-512."""
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), in_channels, num_classes, preact=True, **kwargs)
