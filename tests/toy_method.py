"""A method plugin used only by the tests (loaded through HARNESS_PLUGINS or imported)."""

import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from harness.backbone.method import Display, Method, register_method
from harness.models import Classifier, register_model
from harness.schema import param
from methods.noise import NoiseControl


@dataclass(frozen=True)
class ToyParams:
    gamma: float = param(0.5, ge=0, le=1)
    steps: int = param(10, ge=1)
    mode: Literal["paper", "code"] = "paper"
    use_bn: bool = True


@register_method("toy", presets={"toy-zero": {"gamma": 0.0}, "toy-code": {"mode": "code"}})
class Toy(Method):
    """Declares its report facts like a real plugin: a family colour, a place and an ablation."""

    Params = ToyParams
    version = "3"
    display = Display(color="#123456", order=5, ablation={"toy": "Toy", "toy-zero": "Toy w/o γ"},
                      symbols={"steps": "T_toy"})

    @classmethod
    def default_params(cls, dataset: str) -> ToyParams:
        return ToyParams(steps=5) if dataset == "synthetic" else ToyParams()


@dataclass(frozen=True)
class NanParams:
    nan_epoch: int = param(2, ge=1, doc="the first epoch whose synthesis loss is NaN")


@register_method("noise-nan")
class NoiseThenNaN(NoiseControl):
    """The noise control whose synthesis loss becomes NaN at ``nan_epoch`` (runner tests)."""

    Params = NanParams

    def synthesize(self, epoch: int) -> dict[str, float]:
        return {"toy_loss": math.nan if epoch + 1 >= self.params.nan_epoch else 1.0}


class LinearToy(Classifier):
    """One bias-free linear layer on the flattened image: FLOPs countable by hand (cost tests)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * image_size**2, num_classes, bias=False)

    def forward(self, x):
        return self.fc(x.flatten(1))


@register_model("linear-toy")
def linear_toy(in_channels: int, num_classes: int, image_size: int) -> Classifier:
    return LinearToy(in_channels, num_classes, image_size)
