"""Loading a robust teacher for distillation: frozen, with its checkpoint's SHA-256 checked.

A harness architecture is loaded by :mod:`harness.checkpoint` (with the input normalisation of
``teacher.normalize`` inside the model), a RobustBench zoo entry by :mod:`harness.zoo`.

Training a teacher (PGD-AT, TRADES) lives in :mod:`harness.teacher_training`; its report's
Markdown in :mod:`harness.report.teacher`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

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


def teacher_file(spec: TeacherSpec, info: DatasetInfo) -> Path | None:
    """The file the teacher's weights come from (None: an untrained teacher)."""
    if spec.robustbench is not None:
        from harness.zoo import entry_path  # the optional extra, only for such a teacher

        return entry_path(spec, info)
    return Path(spec.checkpoint) if spec.checkpoint is not None else None


def load_teacher(spec: TeacherSpec, info: DatasetInfo, device: str | torch.device = "cpu", *,
                 weights: bool = True) -> Classifier:
    """A frozen teacher (eval mode, no parameter gradients) from ``spec``: a harness architecture
    with its checkpoint, or a RobustBench zoo entry; checks the file's SHA-256 if given.
    ``weights=False``: the architecture alone, randomly initialised (cost estimates)."""
    if not weights:
        if spec.robustbench is not None:
            from harness.zoo import build_zoo_architecture

            model = build_zoo_architecture(spec, info)
        else:
            model = load_model(spec.arch, None, info)
        return model.to(device).eval().requires_grad_(False)
    path = teacher_file(spec, info)
    if path is not None and spec.sha256 is not None and path.is_file():
        actual = sha256_of(path)
        if actual != spec.sha256:
            raise HarnessError(f"{path}: SHA-256 {actual[:12]}… does not match teacher.sha256 {spec.sha256[:12]}…")
    if spec.robustbench is not None:
        from harness.zoo import load_zoo_teacher

        model = load_zoo_teacher(spec, info)
    else:
        normalize = {"input_mean": spec.normalize.mean, "input_std": spec.normalize.std} if spec.normalize else {}
        model = load_model(spec.arch, spec.checkpoint, info, **normalize)
    model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def verify_teachers(cells: list, shown: str) -> None:
    """Every distinct teacher of a grid, checked once before any work: its file exists, matches
    ``teacher.sha256`` when given, loads with ``weights_only=True`` and fits its architecture (the
    strict state-dict match of :func:`load_teacher`). Raises one :class:`HarnessError` with a line
    per problem, each naming ``shown`` and the teacher key."""
    from harness.data import get_dataset

    problems, seen = [], set()
    for spec in cells:
        teacher, dataset = spec.settings.teacher, spec.settings.dataset
        if repr((teacher, dataset)) in seen:
            continue
        seen.add(repr((teacher, dataset)))
        info = get_dataset(dataset)
        key = "teacher.robustbench" if teacher.robustbench is not None else "teacher.checkpoint"
        try:
            path = teacher_file(teacher, info)
            if path is None:
                continue  # an untrained teacher (tests): nothing to load
            if not path.is_file():
                hint = (f" (place it there, or let `python -m harness teacher check {shown}` download it)"
                        if teacher.robustbench is not None else "")
                raise HarnessError(f"file not found: {path}{hint}")
            load_teacher(teacher, info, "cpu")
        except HarnessError as error:
            problems.append(f"{shown}: {key}: {error}")
    if problems:
        raise HarnessError("\n".join(dict.fromkeys(problems)))

