"""A method plugin used only by the tests (loaded through HARNESS_PLUGINS or imported)."""

from dataclasses import dataclass
from typing import Literal

from harness.backbone.method import Method, register_method
from harness.schema import param


@dataclass(frozen=True)
class ToyParams:
    gamma: float = param(0.5, ge=0, le=1)
    steps: int = param(10, ge=1)
    mode: Literal["paper", "code"] = "paper"
    use_bn: bool = True


@register_method("toy", presets={"toy-zero": {"gamma": 0.0}, "toy-code": {"mode": "code"}})
class Toy(Method):
    Params = ToyParams
    version = "3"

    @classmethod
    def default_params(cls, dataset: str) -> ToyParams:
        return ToyParams(steps=5) if dataset == "synthetic" else ToyParams()
