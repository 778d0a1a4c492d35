"""``harness teacher check``: the check a user runs on a teacher before spending GPU-hours on it.

For every distinct teacher of a grid (teacher, dataset and threat model) it prints the SHA-256 of
the weights and the clean and PGD-20 accuracy on a class-stratified subset of the test set, next to
the figures it is expected to reach, from the first of:

1. the cell's ``teacher.expected`` block;
2. the RobustBench leaderboard entry (clean and AutoAttack accuracy) for a zoo teacher;
3. ``report.json`` beside the checkpoint, written by ``harness teacher train``, when its SHA-256
   matches the file.

A clean accuracy more than :data:`CLEAN_TOLERANCE` points away from the expected one gets a
warning line: the usual causes are inputs normalised differently from the checkpoint's training
(``teacher.normalize``), a checkpoint of another dataset, or a wrong architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import ExpectedAccuracy, RunSpec, TeacherSpec, ThreatModel
from harness.data import DatasetInfo, get_dataset
from harness.evaluate import evaluate
from harness.teacher import load_teacher, sha256_of, teacher_file

CLEAN_TOLERANCE = 3.0  # points of clean accuracy


@dataclass(frozen=True)
class TeacherUnderTest:
    """One distinct teacher of a grid, with what its evaluation needs."""

    spec: TeacherSpec
    info: DatasetInfo
    threat: ThreatModel
    data_root: str | None


@dataclass(frozen=True)
class CheckResult:
    teacher: TeacherUnderTest
    sha256: str | None
    n: int
    clean: float
    pgd20: float
    expected: ExpectedAccuracy | None
    expected_source: str | None

    @property
    def warning(self) -> str | None:
        """One line when the clean accuracy is more than CLEAN_TOLERANCE points off the expected."""
        if self.expected is None or self.expected.clean is None:
            return None
        gap = self.clean - self.expected.clean
        if abs(gap) <= CLEAN_TOLERANCE:
            return None
        return (f"warning: clean accuracy {self.clean:.2f} % is {abs(gap):.2f} points "
                f"{'below' if gap < 0 else 'above'} the expected {self.expected.clean:.2f} % "
                "(check teacher.normalize, the dataset and the architecture)")

    def lines(self) -> list[str]:
        spec, info = self.teacher.spec, self.teacher.info
        sha = self.sha256 or "- (untrained)"
        out = [f"teacher {spec.label} on {info.name}",
               f"  sha256   {sha}",
               f"  measured clean {self.clean:.2f} %, PGD-20 {self.pgd20:.2f} % on {self.n} stratified test images "
               f"(ε = {self.teacher.threat.epsilon:.4g}, step {self.teacher.threat.step_size:.4g})"]
        if self.expected is None:
            out.append("  expected unknown (add teacher.expected: {clean: …, pgd20: …} to compare)")
        else:
            figures = [f"{title} {value:.2f} %" for title, value in (
                ("clean", self.expected.clean), ("PGD-20", self.expected.pgd20),
                ("AutoAttack", self.expected.autoattack)) if value is not None]
            out.append(f"  expected {', '.join(figures)} ({self.expected_source})")
        if self.warning:
            out.append(f"  {self.warning}")
        return out


def distinct_teachers(cells: list[RunSpec]) -> list[TeacherUnderTest]:
    """The grid's teachers, each once per dataset and threat model, in grid order."""
    seen: dict[tuple, TeacherUnderTest] = {}
    for cell in cells:
        s = cell.settings
        item = TeacherUnderTest(s.teacher, get_dataset(s.dataset), s.threat, s.data_root)
        seen.setdefault((s.teacher, s.dataset, s.threat.epsilon, s.threat.step_size), item)
    return list(seen.values())


def expected_accuracy(teacher: TeacherUnderTest, sha256: str | None) -> tuple[ExpectedAccuracy | None, str | None]:
    """The figures the teacher should reach and where they come from (see the module docstring)."""
    spec = teacher.spec
    if spec.expected is not None:
        return spec.expected, "teacher.expected"
    if spec.robustbench is not None:
        from harness.zoo import leaderboard_entry

        entry = leaderboard_entry(spec, teacher.info)
        if entry is not None:
            return entry, "RobustBench leaderboard, AutoAttack on the full test set"
        return None, None
    if spec.checkpoint is None or sha256 is None:
        return None, None
    report = Path(spec.checkpoint).with_name("report.json")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        if data.get("sha256") != sha256 or data.get("dataset") != teacher.info.name:
            return None, None
        attacks = data["attacks"]
        expected = ExpectedAccuracy(clean=attacks["clean"]["avg"], pgd20=attacks.get("pgd20", {}).get("avg"),
                                    autoattack=attacks.get("aa", {}).get("avg"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    aa = attacks.get("aa", {})
    detail = f"; AutoAttack {data.get('aa_version', '?')} on {aa.get('n', '?')}" if aa else ""
    return expected, f"{report}: {data.get('n_eval', '?')} test images{detail}"


def check_teacher(teacher: TeacherUnderTest, *, n: int = 1000, device: str = "cpu", seed: int = 0,
                  batch_size: int = 256, progress: bool = True, download: bool = True) -> CheckResult:
    """Load the teacher (letting RobustBench download a missing zoo file when ``download``), hash its
    file, and measure clean and PGD-20 accuracy on ``n`` stratified test images."""
    spec, info = teacher.spec, teacher.info
    path = teacher_file(spec, info)
    if spec.robustbench is not None and download and not path.is_file():
        from harness.zoo import load_zoo_teacher

        load_zoo_teacher(spec, info, download=True)  # lets RobustBench fetch the missing file once
    torch.manual_seed(seed)  # an untrained teacher is the same on every call
    model = load_teacher(spec, info, device)
    sha256 = sha256_of(path) if path is not None else None
    test = info.load("test", teacher.data_root)
    result = evaluate(model, test, ["clean", "pgd20"], epsilon=teacher.threat.epsilon,
                      step_size=teacher.threat.step_size, num_classes=info.num_classes, n_eval=n,
                      batch_size=batch_size, device=device, seed=seed, progress=progress)
    clean, pgd20 = (result.metrics(name)["avg"] for name in ("clean", "pgd20"))
    expected, source = expected_accuracy(teacher, sha256)
    return CheckResult(teacher, sha256, result.n_eval, clean, pgd20, expected, source)
