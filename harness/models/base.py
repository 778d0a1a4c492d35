"""The classifier contract every architecture follows.

A model is a sequence of named *stages* (module attributes run in order) followed by a
``tail`` (global pooling + linear layer). This gives every method what it needs:

- ``features(x, layer)``: the output of stage ``layer`` (FERD's f_l^T, Eq. 4);
- ``head(z, layer)``: the rest of the network after ``layer`` (FERD's f_{l+}^T), so that
  ``head(features(x, l), l)`` is exactly ``forward(x)``;
- ``forward_blocks(x)``: logits and the outputs of ``block_layers`` (attention transfer);
- ``bn_layers()``: every BatchNorm2d, for DeepInversion statistics hooks.

Inputs are images in [0, 1]; a model that wants normalisation carries it in
``input_mean`` / ``input_std`` and applies it inside ``features``. ``create_model`` stores the
weights channels-last and the stages see channels-last activations, because that layout makes
the input-gradient passes of every attack step faster on the CPU and is the one GPU tensor cores
want (benchmarks/channels_last.py measures it). Keep processes × threads within the cores, as the
local runner does through ``OMP_NUM_THREADS``: oversubscription slows channels-last backward passes
of small batches more than NCHW ones.

An architecture whose reference checkpoints carry modules it does not build lists their key
prefixes in ``ignored_checkpoint_prefixes``; :mod:`harness.checkpoint` drops them on loading.
Layer helpers shared by the architectures are in :mod:`harness.models.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.errors import HarnessError


class Classifier(nn.Module):
    """Base class: subclasses set ``stages``, ``feature_layers``, ``block_layers``
    (optionally ``ignored_checkpoint_prefixes``) and implement ``tail``."""

    stages: tuple[str, ...] = ()
    feature_layers: tuple[str, ...] = ()
    block_layers: tuple[str, ...] = ()
    default_feature_layer: str = ""
    ignored_checkpoint_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if (input_mean is None) != (input_std is None):
            raise ValueError("input_mean and input_std must be given together")
        self.normalizes = input_mean is not None
        if self.normalizes:
            self.register_buffer("input_mean", torch.tensor(input_mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("input_std", torch.tensor(input_std).view(1, -1, 1, 1), persistent=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` if the model carries statistics, in the channels-last layout."""
        if self.normalizes:
            x = (x - self.input_mean) / self.input_std
        return x.contiguous(memory_format=torch.channels_last)

    @property
    def label(self) -> str:
        """How error messages name the model."""
        return type(self).__name__

    def _stage(self, name: str) -> nn.Module:
        """The module of stage ``name``."""
        return getattr(self, name)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        """Pooling and classifier after the last stage."""
        raise NotImplementedError

    def _check_layer(self, layer: str) -> int:
        if layer not in self.feature_layers:
            raise HarnessError(
                f"{self.label} has no feature layer '{layer}' "
                f"(choose from {', '.join(self.feature_layers)})"
            )
        return self.stages.index(layer)

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Output of stage ``layer`` for images ``x`` in [0, 1]."""
        last = self._check_layer(layer)
        x = self._prepare(x)
        for name in self.stages[: last + 1]:
            x = self._stage(name)(x)
        return x

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor:
        """Logits from the output ``z`` of stage ``layer``."""
        first = self._check_layer(layer) + 1
        for name in self.stages[first:]:
            z = self._stage(name)(z)
        return self.tail(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.feature_layers[-1]
        return self.head(self.features(x, last), last)

    def forward_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the outputs of ``block_layers`` in order (for attention transfer)."""
        x = self._prepare(x)
        blocks = []
        for name in self.stages:
            x = self._stage(name)(x)
            if name in self.block_layers:
                blocks.append(x)
        return self.tail(x), blocks

    def bn_layers(self) -> list[nn.BatchNorm2d]:
        """Every BatchNorm2d of the model, in module order."""
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
