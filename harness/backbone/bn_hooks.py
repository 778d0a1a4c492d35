"""DeepInversion's BatchNorm-statistics loss through forward hooks (docs/methods.md).

For every BatchNorm2d the teacher runs (:func:`batchnorm_layers`) a hook records the batch mean μ_l(x) and biased
variance σ²_l(x) of its input over (N, H, W); the loss is
Σ_l ‖μ_l(x) − running_mean_l‖₂ + ‖σ²_l(x) − running_var_l‖₂ (L2 norms, not squared).
With ``momentum`` m (Fast), the batch statistics are first blended with those of earlier
rounds: μ̂ = m·μ_prev + (1 − m)·μ, and ``end_round()`` stores μ̂ for the next round.

Hooks record only inside ``with stats.record():``, so other teacher passes are ignored::

    with stats.record():
        logits = teacher(x)
    loss_bn = stats.loss()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers a forward pass of ``model`` runs: the classifier's own list
    (``bn_layers()``, which leaves out modules a wrapped zoo model holds but never calls), else every
    BatchNorm2d in module order."""
    if callable(getattr(model, "bn_layers", None)):
        return list(model.bn_layers())
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


class BNStatistics:
    def __init__(self, model: nn.Module, momentum: float | None = None) -> None:
        self.momentum = momentum
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise ValueError("the model has no BatchNorm2d layer")
        self.terms: list[torch.Tensor] = []
        self.current: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.previous: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.recording = False
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    @contextmanager
    def record(self) -> Iterator[None]:
        """Record the statistics of the forward passes inside this block (earlier ones are dropped)."""
        self.terms, self.current, self.recording = [], [], True
        try:
            yield
        finally:
            self.recording = False

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.recording:
            return
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        index = len(self.current) % len(self.layers)
        if self.momentum is not None and self.previous is not None:
            old_mean, old_var = self.previous[index]
            mean = self.momentum * old_mean + (1 - self.momentum) * mean
            var = self.momentum * old_var + (1 - self.momentum) * var
        self.current.append((mean, var))
        self.terms.append(torch.norm(mean - layer.running_mean, 2) + torch.norm(var - layer.running_var, 2))

    def loss(self) -> torch.Tensor:
        """L_bn of the passes recorded by the last ``record()`` block; clears them."""
        if not self.terms:
            raise RuntimeError("no forward pass recorded: run the teacher inside `with stats.record():`")
        total = torch.stack(self.terms).sum()
        self.terms, self.last, self.current = [], self.current, []
        return total

    def end_round(self) -> None:
        """Keep the last pass's (blended) statistics for the momentum of the next round."""
        if self.momentum is not None:
            self.previous = [(m.detach(), v.detach()) for m, v in self.last]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
