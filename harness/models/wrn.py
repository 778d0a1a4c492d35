"""WideResNet-34-10/20 with the module layout of the TRADES / RobustBench WideResNet.

State-dict keys match those checkpoints (``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,
bn2,conv2,convShortcut}``, ``bn1``, ``fc``) except for TRADES' unused ``sub_block1``, which
:attr:`WideResNet.ignored_checkpoint_prefixes` names so that :mod:`harness.checkpoint` drops it on
loading. Global average pooling replaces the fixed 8x8 pooling, so every image size works and the
builders ignore ``image_size``.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models import register_model
from harness.models.base import Classifier
from harness.models.layers import conv3x3, init_weights, pool_and_classify


class WideBasicBlock(nn.Module):
    """TRADES ``BasicBlock``: pre-activation block, 1x1 ``convShortcut`` when in != out."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.convShortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.convShortcut is None:
            out = self.relu1(self.bn1(x))
            out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
            return x + out
        x = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(x))))
        return self.convShortcut(x) + out


class NetworkBlock(nn.Module):
    """``num_blocks`` WideBasicBlocks in ``layer``; the first one changes width and stride."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Classifier):
    """WideResNet-``depth``-``widen_factor``: widths 16, 16k, 32k, 64k; strides 1, 2, 2."""

    stages = ("conv1", "block1", "block2", "block3", "bn1", "relu")
    feature_layers = ("block1", "block2", "block3", "bn1")
    block_layers = ("block1", "block2", "block3")
    default_feature_layer = "bn1"  # FERD's bottleneck in its released code: block3 → bn1, before the ReLU
    ignored_checkpoint_prefixes = ("sub_block1.",)  # TRADES' WideResNet builds an unused copy of block1

    def __init__(self, depth: int, widen_factor: int, in_channels: int, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(in_channels, widths[0])
        self.block1 = NetworkBlock(blocks_per_group, widths[0], widths[1], stride=1)
        self.block2 = NetworkBlock(blocks_per_group, widths[1], widths[2], stride=2)
        self.block3 = NetworkBlock(blocks_per_group, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=False)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return pool_and_classify(z, self.fc)


@register_model("wrn-34-10", aliases=("wrn34-10", "wideresnet-34-10"))
def wrn_34_10(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """WideResNet-34-10 (about 46M parameters), loadable from TRADES checkpoints."""
    return WideResNet(34, 10, in_channels, num_classes, **kwargs)


@register_model("wrn-34-20", aliases=("wrn34-20", "wideresnet-34-20"))
def wrn_34_20(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """WideResNet-34-20 (about 185M parameters)."""
    return WideResNet(34, 20, in_channels, num_classes, **kwargs)
