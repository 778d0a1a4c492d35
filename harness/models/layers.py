"""Layer helpers shared by every architecture: initialisation, convolution blocks, pooled classifier.

Helpers build plain ``nn`` modules and add no module names of their own, so the state-dict
keys of a model are those of the attributes it assigns them to.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions, unit/zero BatchNorm, zero linear biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv_bn_relu(
    in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution (padding keeps the size at stride 1), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=False),
    )


def pool_and_classify(z: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """Global average pooling followed by the linear classifier ``fc``."""
    return fc(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))
