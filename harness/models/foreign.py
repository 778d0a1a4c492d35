"""Classifiers built outside the harness (RobustBench's model zoo), in the harness's contract.

A :class:`ForeignClassifier` wraps a module whose architecture the harness does not define. Where
the module's class has a known *stage plan* (the named children its ``forward`` runs in order, and
the pooling and classifier after them) the wrapper runs the plan, for ``forward`` too, and offers
``features``/``head``/``forward_blocks``, so FERD's bottleneck and ZSKT's attention work on it;
otherwise ``forward`` is the module's own and those raise one line saying what the model lacks.
``bn_layers()`` lists the BatchNorm2d layers a forward pass runs, in the order it runs them (found by
one pass at construction), for DeepInversion's statistics and CMI's features.

Stage plans:

- RobustBench's ``WideResNet`` (model_zoo/architectures/wide_resnet.py: conv1, block1–3, bn1, ReLU,
  an 8×8 average pool and fc): stages ``conv1, block1, block2, block3, bn1, relu`` as the harness's
  own WRN, with ``bn1`` as the default feature layer. The plan's ReLU is not in-place (the zoo's is),
  so ``head(features(x, "bn1"), "bn1")`` leaves the features it is given unchanged; its pool is
  global, which equals the zoo's 8×8 pool on 32×32 inputs and also serves other sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.base import Classifier
from harness.models.layers import pool_and_classify


@dataclass(frozen=True)
class StagePlan:
    """The named children a module's forward runs in order, and its tail."""

    stages: tuple[str, ...]
    feature_layers: tuple[str, ...]
    block_layers: tuple[str, ...]
    default_feature_layer: str
    tail: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    replaced: dict[str, Callable[[], nn.Module]]  # stages the plan runs with its own module


WIDE_RESNET = StagePlan(
    stages=("conv1", "block1", "block2", "block3", "bn1", "relu"),
    feature_layers=("block1", "block2", "block3", "bn1"),
    block_layers=("block1", "block2", "block3"),
    default_feature_layer="bn1",
    tail=lambda net, z: pool_and_classify(z, net.fc),
    replaced={"relu": nn.ReLU},
)
STAGE_PLANS: dict[str, StagePlan] = {"WideResNet": WIDE_RESNET}


def stage_plan(net: nn.Module) -> StagePlan | None:
    """The plan for ``net``'s class, if known and ``net`` has every module it names."""
    plan = STAGE_PLANS.get(type(net).__name__)
    if plan is None:
        return None
    needed = [name for name in plan.stages if name not in plan.replaced] + ["fc"]
    return plan if all(isinstance(getattr(net, name, None), nn.Module) for name in needed) else None


class ForeignClassifier(Classifier):
    """``net`` (images in [0, 1] after the optional normalisation) in the classifier contract."""

    def __init__(self, net: nn.Module, name: str, input_shape: tuple[int, int, int],
                 input_mean: Sequence[float] | None = None, input_std: Sequence[float] | None = None) -> None:
        super().__init__(input_mean, input_std)
        self.net = net
        self.name = name
        self.plan = stage_plan(net)
        if self.plan is not None:
            self.stages = self.plan.stages
            self.feature_layers = self.plan.feature_layers
            self.block_layers = self.plan.block_layers
            self.default_feature_layer = self.plan.default_feature_layer
            self.replaced = nn.ModuleDict({k: make() for k, make in self.plan.replaced.items()})
        self._bn_names = self._batchnorms_run(input_shape)

    def _batchnorms_run(self, input_shape: tuple[int, int, int]) -> tuple[str, ...]:
        """Names of the BatchNorm2d modules one forward pass runs, in the order it runs them (a zoo
        model may hold modules it never calls, e.g. TRADES' ``sub_block1``)."""
        names = {module: name for name, module in self.named_modules() if isinstance(module, nn.BatchNorm2d)}
        order: list[str] = []
        handles = [m.register_forward_hook(lambda m, i, o: order.append(names[m])) for m in names]
        training = self.training
        try:
            with torch.no_grad():
                self.eval()(torch.zeros(2, *input_shape))
        finally:
            for handle in handles:
                handle.remove()
            self.train(training)
        return tuple(dict.fromkeys(order))

    def bn_layers(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm2d layers a forward pass runs, in that order (statistics hooks use these)."""
        modules = dict(self.named_modules())
        return [modules[name] for name in self._bn_names]

    @property
    def label(self) -> str:
        return f"{self.name} ({type(self.net).__name__})"

    def _stage(self, name: str) -> nn.Module:
        if name in self.plan.replaced:
            return self.replaced[name]
        return getattr(self.net, name)

    def _check_layer(self, layer: str) -> int:
        if self.plan is None:
            raise HarnessError(f"the teacher {self.label} exposes no feature layers (features/head): the harness "
                               f"knows the stages of {', '.join(STAGE_PLANS)}; use a harness architecture "
                               "(teacher.arch with a checkpoint) for this method")
        return super()._check_layer(layer)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        return self.plan.tail(self.net, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan is None:
            return self.net(self._prepare(x))
        return super().forward(x)

    def forward_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check_layer(self.default_feature_layer)
        return super().forward_blocks(x)
