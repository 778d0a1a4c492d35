"""The shared DCGAN-style generator (docs/methods.md), sized to the dataset.

z (nz) → Linear → BN → [Upsample×2 → Conv3×3 → BN → LeakyReLU(0.2)] ×2 → Conv3×3 → Sigmoid,
starting at H/4 so it yields C×H×W images in [0, 1] (28×28 starts at 7×7).

``output_bn=True`` inserts an affine ``BatchNorm2d(C)`` between the last convolution and the
Sigmoid (ZSKT's released generator ends in such a layer): the pre-Sigmoid output of a training
batch then has per-channel mean β and standard deviation γ (0 and 1 at initialisation). The
default (False) builds exactly the layers and state-dict keys above.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, nz: int, channels: int, image_size: int, width: int = 64, output_bn: bool = False) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image size {image_size} is not divisible by 4")
        self.nz, self.start = nz, image_size // 4
        wide = 2 * width
        self.project = nn.Linear(nz, wide * self.start**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(wide),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(wide, wide, 3, padding=1, bias=False),
            nn.BatchNorm2d(wide),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(wide, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            *([nn.BatchNorm2d(channels, affine=True)] if output_bn else []),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z)
        return self.body(x.view(len(z), -1, self.start, self.start))

    @torch.no_grad()
    def reset(self) -> None:
        """Re-initialise as CMI/FERD do each round: conv/linear N(0, 0.02), BN γ N(1, 0.02), β 0.

        The draws are made on the CPU (default generator) and copied into the parameters, so a
        seed gives the same generator on every device.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.empty(module.weight.shape).normal_(0.0, 0.02))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.empty(module.weight.shape).normal_(1.0, 0.02))
                module.bias.zero_()
                module.reset_running_stats()
