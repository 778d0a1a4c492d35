"""Noise control: the shared RSLAD distillation on uniform-noise images, with no synthesis.

A data-free method that does not beat this control has learned nothing from the teacher
beyond what random inputs reveal (docs/architecture.md: the same loop on noise reaches chance level).
"""

from __future__ import annotations

import torch

from harness.backbone.devices import rand
from harness.backbone.method import Display, Method, register_method


@register_method("noise")
class NoiseControl(Method):
    display = Display(color="#9e9e9e", order=0)
    version = "1"
    synthesizes = False

    def synthesize(self, epoch: int) -> dict[str, float]:
        return {}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        info = self.ctx.info
        shape = (batch_size, info.channels, info.image_size, info.image_size)
        return rand(shape, generator=generator, device=self.ctx.device), None
