"""Small CPU architectures for the offline Fashion-MNIST benchmark (1x28x28, 10 classes).

All four downsample twice (28 -> 14 -> 7), and their ``block_layers`` sit at strides
1, 2 and 4, so attention maps of teacher and students have matching sizes. Adaptive
pooling makes every other image size work too, so the builders ignore ``image_size``.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models import register_model
from harness.models.base import Classifier
from harness.models.mobilenetv2 import MobileNetV2
from harness.models.layers import conv_bn_relu, init_weights, pool_and_classify
from harness.models.resnet import ResNet

# (expansion t, output channels c, blocks n, first stride s) per stage. As in the ImageNet network,
# the first two stages reach stride 4 (28x28 -> 7x7), so the expanded depthwise layers run at 7x7:
# cheaper on a CPU than downsampling in stages 2 and 4, with the same final resolution.
MOBILENETV2_TINY_CONFIG = (
    (1, 16, 1, 2),
    (4, 24, 2, 2),
    (4, 32, 2, 1),
    (4, 48, 2, 1),
    (4, 64, 1, 1),
)


class PlainCNN(Classifier):
    """conv3x3-BN-ReLU blocks ``block1..blockN`` of the given widths and strides, then pool + fc."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], strides: tuple[int, ...],
                 block_layers: tuple[str, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.stages = tuple(f"block{i + 1}" for i in range(len(widths)))
        self.feature_layers = self.stages
        self.block_layers = block_layers
        self.default_feature_layer = self.stages[-1]
        in_planes = in_channels
        for name, width, stride in zip(self.stages, widths, strides, strict=True):
            setattr(self, name, conv_bn_relu(in_planes, width, 3, stride))
            in_planes = width
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return pool_and_classify(z, self.fc)


@register_model("cnn5")
def cnn5(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """Plain 5-layer CNN teacher: widths 32, 64, 64, 128, 128, stride 2 in blocks 2 and 4 (about 279k
    parameters on 1x28x28, 10 classes)."""
    return PlainCNN(in_channels, num_classes, (32, 64, 64, 128, 128), (1, 2, 1, 2, 1),
                    ("block1", "block3", "block5"), **kwargs)


@register_model("resnet8")
def resnet8(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """ResNet-8 student: one post-activation BasicBlock per stage, widths 16, 32, 64."""
    return ResNet((1, 1, 1), (16, 32, 64), in_channels, num_classes, **kwargs)


@register_model("resnet8-w2", aliases=("resnet8_w2",))
def resnet8_w2(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """ResNet-8 at twice the width (32, 64, 128): the capacity check of the offline benchmark."""
    return ResNet((1, 1, 1), (32, 64, 128), in_channels, num_classes, **kwargs)


@register_model("mobilenetv2-tiny", aliases=("mobilenetv2_tiny",))
def mobilenetv2_tiny(in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """Narrow MobileNetV2 student (expansion 4, widths 16-64, last 1x1 conv to 256; ~103k)."""
    return MobileNetV2(
        MOBILENETV2_TINY_CONFIG,
        stem_width=16,
        last_width=256,
        block_layers=("stage1", "stage3", "stage5"),
        in_channels=in_channels,
        num_classes=num_classes,
        **kwargs,
    )
