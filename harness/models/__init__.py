"""Teacher and student architectures, registered by name (timm-style ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.models.base import Classifier
from harness.registry import Registry

Builder = Callable[..., Classifier]
MODELS: Registry[Builder] = Registry("model")


def register_model(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(in_channels, num_classes, image_size, **kw)``."""
    return MODELS.register(name, aliases=aliases)  # type: ignore[return-value]


def create_model(name: str, *, in_channels: int, num_classes: int, image_size: int, **kwargs) -> Classifier:
    """Build the architecture ``name`` for images of ``in_channels`` × ``image_size``², its weights
    channels-last (see :mod:`harness.models.base`)."""
    model = MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kwargs)
    return model.to(memory_format=torch.channels_last)


# Importing the architecture modules registers them.
from harness.models import mobilenetv2, resnet, small, wrn  # noqa: E402,F401

__all__ = ["MODELS", "Classifier", "create_model", "register_model"]
