"""Loading classifiers from checkpoint files (``weights_only=True``, clear one-line errors).

Keys are cleaned before loading: a leading ``module.`` (from ``DataParallel``) is stripped, and
the prefixes an architecture lists in ``Classifier.ignored_checkpoint_prefixes`` (modules of its
reference checkpoints that it does not build, e.g. TRADES' ``sub_block1``) are dropped; every
other key must match the architecture exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from harness.data import DatasetInfo
from harness.errors import HarnessError
from harness.models import Classifier, create_model


def clean_state_dict(state_dict: Mapping[str, torch.Tensor],
                     ignored_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Strip a leading ``module.`` (DataParallel) from every key and drop keys under ``ignored_prefixes``.

    Returns a plain dict (without version metadata), so BatchNorm fills in a missing
    ``num_batches_tracked`` from old checkpoints and ``load_state_dict(strict=True)`` works.
    """
    cleaned = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if not key.startswith(ignored_prefixes):
            cleaned[key] = value
    return cleaned


def read_state_dict(path: str | Path, ignored_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a bare one, or under ``state_dict`` / ``model`` keys; cleaned by
    :func:`clean_state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: checkpoint not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        reason = " ".join(str(error).split())[:160]
        raise HarnessError(f"{path}: not a loadable PyTorch checkpoint ({reason})") from None
    for key in ("state_dict", "model"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict) or not content or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        raise HarnessError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return clean_state_dict(content, ignored_prefixes)


def load_model(arch: str, checkpoint: str | Path | None, info: DatasetInfo, **model_kwargs) -> Classifier:
    """Architecture ``arch`` for dataset ``info`` (``model_kwargs`` go to its builder, e.g. the input
    normalisation), with weights from ``checkpoint`` if given."""
    model = create_model(arch, in_channels=info.channels, num_classes=info.num_classes, image_size=info.image_size,
                         **model_kwargs)
    if checkpoint is None:
        return model
    state = read_state_dict(checkpoint, model.ignored_checkpoint_prefixes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise HarnessError(
            f"{checkpoint}: does not fit architecture '{arch}' "
            f"({len(missing)} missing and {len(unexpected)} unexpected keys, e.g. {detail})"
        )
    classifier = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]
    outputs = state[f"{classifier}.weight"].shape[0]
    if outputs != info.num_classes:
        raise HarnessError(f"{checkpoint}: the model has {outputs} outputs but {info.name} has {info.num_classes} classes")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise HarnessError(
                f"{checkpoint}: '{key}' has shape {tuple(value.shape)}, architecture '{arch}' on "
                f"{info.name} expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)
    return model
