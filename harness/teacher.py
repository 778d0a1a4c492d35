"""Loading a robust teacher for distillation: frozen, with its checkpoint's SHA-256 checked.

Training a teacher (PGD-AT, TRADES) lives in :mod:`harness.teacher_training`; its report's
Markdown in :mod:`harness.report.teacher`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.checkpoint import load_model
from harness.config import TeacherSpec
from harness.data import DatasetInfo
from harness.errors import HarnessError
from harness.models import Classifier


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path`` (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(spec: TeacherSpec, info: DatasetInfo, device: str = "cpu") -> Classifier:
    """A frozen teacher (eval mode, no parameter gradients) from ``spec``; checks SHA-256 if given."""
    if spec.checkpoint is not None and spec.sha256 is not None:
        actual = sha256_of(spec.checkpoint) if Path(spec.checkpoint).is_file() else None
        if actual is not None and actual != spec.sha256:
            raise HarnessError(f"{spec.checkpoint}: SHA-256 {actual[:12]}… does not match teacher.sha256 "
                               f"{spec.sha256[:12]}…")
    model = load_model(spec.arch, spec.checkpoint, info).to(device)
    model.eval()
    model.requires_grad_(False)
    return model
