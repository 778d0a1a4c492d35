"""CIFAR-style MobileNetV2 (width 1.0).

Compared with the ImageNet network the stem and the 24-channel stage use stride 1, so the
total stride is 8 (32x32 -> 4x4, 16x16 -> 2x2); 64x64 inputs keep the same strides
(8x8 final map) and adaptive pooling handles every size, so ``image_size`` is ignored.
ReLU replaces ReLU6, as in common CIFAR implementations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.models import register_model
from harness.models.base import Classifier
from harness.models.layers import conv_bn_relu, init_weights, pool_and_classify

# (expansion t, output channels c, blocks n, first stride s) per stage.
MOBILENETV2_CIFAR_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity skip when shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers = [conv_bn_relu(in_planes, hidden, 1)] if expansion != 1 else []
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_planes, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_skip else out


class MobileNetV2(Classifier):
    """Stages ``stem``, ``stage1``.. (one per config row), ``last`` (1x1 conv, BN, ReLU)."""

    def __init__(
        self,
        config: Sequence[tuple[int, int, int, int]],
        stem_width: int,
        last_width: int,
        block_layers: tuple[str, ...],
        in_channels: int,
        num_classes: int,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.stem = conv_bn_relu(in_channels, stem_width, 3)
        stage_names = []
        in_planes = stem_width
        for index, (expansion, out_planes, num_blocks, stride) in enumerate(config, start=1):
            blocks = []
            for position in range(num_blocks):
                block_stride = stride if position == 0 else 1
                blocks.append(InvertedResidual(in_planes, out_planes, block_stride, expansion))
                in_planes = out_planes
            name = f"stage{index}"
            setattr(self, name, nn.Sequential(*blocks))
            stage_names.append(name)
        self.last = conv_bn_relu(in_planes, last_width, 1)
        self.fc = nn.Linear(last_width, num_classes)

        self.stages = ("stem", *stage_names, "last")
        self.feature_layers = (*stage_names, "last")
        if not set(block_layers) <= set(stage_names):
            raise ValueError(f"block_layers {block_layers} must be among {stage_names}")
        self.block_layers = block_layers
        self.default_feature_layer = "last"
        init_weights(self)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return pool_and_classify(z, self.fc)


@register_model("mobilenetv2", aliases=("mobilenet_v2",))
def mobilenetv2(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """MobileNetV2 for CIFAR; attention-transfer blocks at strides 2, 4 and 8."""
    return MobileNetV2(
        MOBILENETV2_CIFAR_CONFIG,
        stem_width=32,
        last_width=1280,
        block_layers=("stage3", "stage5", "stage7"),
        in_channels=in_channels,
        num_classes=num_classes,
        **kwargs,
    )
