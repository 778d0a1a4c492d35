"""The lowest-loss iterate of a synthesis round, chosen on the device (no host sync per step)."""

from __future__ import annotations

import torch

from harness.backbone.devices import to_host


class BestIterate:
    """Keeps the tensors and loss terms of the iterate with the lowest loss so far.

    ``update(loss, terms, images=..., features=...)`` with a scalar loss, a dict of scalar loss
    terms and same-shaped tensors each step; a strictly lower loss replaces the kept ones (the
    first iterate is always kept, a NaN loss never replaces it). The choice is a ``torch.where``
    on the device, so the loop never waits for the device; :meth:`numbers` reads the loss and the
    terms back once, after the round.
    """

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        self.names: list[str] = []

    def update(self, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None, **tensors: torch.Tensor) -> None:
        terms = terms or {}
        numbers = torch.stack([loss.detach().float().reshape(()),
                               *(value.detach().float().reshape(()) for value in terms.values())])
        tensors = {"numbers": numbers, **{name: value.detach() for name, value in tensors.items()}}
        if self.loss is None:
            self.names = ["loss", *terms]
            self.loss = loss.detach().clone()
            self.tensors = {name: value.clone() for name, value in tensors.items()}
            return
        better = loss.detach() < self.loss
        self.loss = torch.where(better, loss.detach(), self.loss)
        self.tensors = {name: torch.where(better, value, self.tensors[name]) for name, value in tensors.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def numbers(self) -> dict[str, float]:
        """The kept iterate's loss (``loss``) and terms as floats: one device-to-host transfer."""
        return dict(zip(self.names, to_host(self.tensors["numbers"]).double().tolist()))
