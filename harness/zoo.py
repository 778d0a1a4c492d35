"""Teachers from RobustBench's model zoo (the optional ``robustbench`` extra).

``teacher: {robustbench: NAME, threat: Linf}`` names a zoo entry; the file is RobustBench's own
layout, ``<model_dir>/<dataset>/<threat>/<NAME>.pt``, and ``robustbench.utils.load_model`` builds
the architecture and loads it, so an offline user who has placed the file gets exactly the zoo's
model. Only ``harness teacher check`` lets RobustBench download a missing file: workers never do
(a grid's cells would race for the same file, and compute nodes are often offline).

Two details of robustbench 1.1.1: its package imports ``autoattack`` (the GitHub name of the
AutoAttack code), which PyPI ships as ``pyautoattack`` — the same modules, provided here under the
old name when it is absent — and its ``load_model`` calls ``torch.load`` without
``weights_only``; the file is therefore first read here with ``weights_only=True``, so that a
pickled object in it is refused before RobustBench opens it.

The expected clean and AutoAttack accuracies of an entry are read from the leaderboard tables in
the installed package's description (its README).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

from torch import nn

from harness.checkpoint import read_state_dict
from harness.config import ExpectedAccuracy, TeacherSpec
from harness.data import DatasetInfo
from harness.errors import HarnessError
from harness.models.foreign import ForeignClassifier
from harness.registry import suggest

INSTALL_HINT = "pip install -e '.[robustbench]'"
# The harness's dataset names that RobustBench also ranks (BenchmarkDataset values).
ZOO_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
# Headings of the leaderboard tables in RobustBench's README.
_HEADING_DATASETS = {"CIFAR-10": "cifar10", "CIFAR-100": "cifar100", "ImageNet": "imagenet"}
_MARKUP = re.compile(r"</?(sub|sup)>|\*")


def robustbench() -> SimpleNamespace:
    """The parts of the robustbench package the harness uses, or one line saying how to install it."""
    if importlib.util.find_spec("robustbench") is None:
        raise HarnessError(f"a robustbench teacher needs the robustbench package: {INSTALL_HINT}")
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        package = importlib.import_module("pyautoattack")
        sys.modules["autoattack"] = package
        for name in ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections", "fab_pt",
                     "other_utils", "square", "state"):
            sys.modules[f"autoattack.{name}"] = importlib.import_module(f"pyautoattack.{name}")
    try:
        with warnings.catch_warnings():  # its imports warn about pkg_resources and torch.jit
            warnings.simplefilter("ignore")
            utils = importlib.import_module("robustbench.utils")
            enums = importlib.import_module("robustbench.model_zoo.enums")
            zoo = importlib.import_module("robustbench.model_zoo")
    except ImportError as error:
        raise HarnessError(f"the robustbench package does not import ({error}): {INSTALL_HINT}") from None
    return SimpleNamespace(load_model=utils.load_model, models=zoo.model_dicts,
                           Dataset=enums.BenchmarkDataset, Threat=enums.ThreatModel)


def zoo_dataset(spec: TeacherSpec, info: DatasetInfo) -> str:
    """RobustBench's name of the teacher's dataset: ``zoo_dataset`` or the cell's."""
    if spec.zoo_dataset is not None:
        if spec.zoo_dataset not in ZOO_DATASETS.values():
            raise HarnessError(f"RobustBench has no dataset '{spec.zoo_dataset}' (choose from "
                               f"{', '.join(ZOO_DATASETS.values())})")
        return spec.zoo_dataset
    if info.name not in ZOO_DATASETS:
        raise HarnessError(f"RobustBench ranks no models on {info.name}; set teacher.zoo_dataset to the "
                           f"dataset the model was trained on ({', '.join(ZOO_DATASETS.values())})")
    return ZOO_DATASETS[info.name]


def entry_names(spec: TeacherSpec, info: DatasetInfo) -> list[str]:
    """The zoo's model names for the teacher's dataset and threat model."""
    rb = robustbench()
    return list(rb.models[rb.Dataset(zoo_dataset(spec, info))][rb.Threat(spec.threat)])


def check_entry(spec: TeacherSpec, info: DatasetInfo) -> None:
    """The extra is installed and the zoo has the named entry (nothing is loaded or downloaded)."""
    names = entry_names(spec, info)
    if spec.robustbench not in names:
        raise HarnessError(f"RobustBench has no {zoo_dataset(spec, info)} {spec.threat} model "
                           f"'{spec.robustbench}'{suggest(spec.robustbench, names)}")


def entry_path(spec: TeacherSpec, info: DatasetInfo) -> Path:
    """Where RobustBench keeps the entry's weights: ``<model_dir>/<dataset>/<threat>/<name>.pt``."""
    return Path(spec.model_dir, zoo_dataset(spec, info), spec.threat, f"{spec.robustbench}.pt")


def load_zoo_teacher(spec: TeacherSpec, info: DatasetInfo, *, download: bool = False) -> ForeignClassifier:
    """The zoo entry as a :class:`ForeignClassifier` (CPU, eval mode), with ``spec.normalize`` if set."""
    check_entry(spec, info)
    path = entry_path(spec, info)
    if not path.is_file() and not download:
        raise HarnessError(f"{path}: RobustBench model file not found; place it there, or let "
                           "`python -m harness teacher check` download it once")
    placed = path.is_file()
    if placed:
        read_state_dict(path)  # refuses pickled objects (weights_only=True) before RobustBench opens it
    try:
        net = robustbench().load_model(spec.robustbench, model_dir=spec.model_dir, dataset=zoo_dataset(spec, info),
                                       threat_model=spec.threat)
    except Exception as error:  # download and key-matching failures of many types
        reason = " ".join(str(error).split())[:160]
        if not placed:
            path.unlink(missing_ok=True)  # a partial download
            raise HarnessError(f"{path}: not found, and RobustBench's download failed ({reason}); "
                               "place the file there") from None
        raise HarnessError(f"{path}: RobustBench could not load '{spec.robustbench}' ({reason})") from None
    normalize = spec.normalize
    model = ForeignClassifier(net, f"robustbench:{spec.robustbench}", _input_shape(info),
                              normalize.mean if normalize else None, normalize.std if normalize else None)
    outputs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if outputs and outputs[-1].out_features != info.num_classes:
        raise HarnessError(f"{model.label}: the model has {outputs[-1].out_features} outputs but "
                           f"{info.name} has {info.num_classes} classes")
    return model.eval()


def build_zoo_architecture(spec: TeacherSpec, info: DatasetInfo) -> ForeignClassifier:
    """The entry's architecture with random weights (what cost estimates count); no file is read."""
    check_entry(spec, info)
    rb = robustbench()
    net = rb.models[rb.Dataset(zoo_dataset(spec, info))][rb.Threat(spec.threat)][spec.robustbench]["model"]()
    return ForeignClassifier(net, f"robustbench:{spec.robustbench}", _input_shape(info))


def _input_shape(info: DatasetInfo) -> tuple[int, int, int]:
    return info.channels, info.image_size, info.image_size


def leaderboard_entry(spec: TeacherSpec, info: DatasetInfo) -> ExpectedAccuracy | None:
    """The entry's clean and AutoAttack accuracy from the installed package's leaderboard tables."""
    try:
        text = importlib.metadata.metadata("robustbench").get_payload() or ""
    except importlib.metadata.PackageNotFoundError:
        return None
    return parse_leaderboard(text).get((zoo_dataset(spec, info), spec.threat, spec.robustbench))


def parse_leaderboard(text: str) -> dict[tuple[str, str, str], ExpectedAccuracy]:
    """``(dataset, threat, name) -> clean and AutoAttack %`` from RobustBench's README tables."""
    table: dict[tuple[str, str, str], ExpectedAccuracy] = {}
    dataset = threat = None
    for line in text.splitlines():
        if line.startswith("### "):
            dataset = _HEADING_DATASETS.get(line[4:].strip())
        elif line.startswith("#### "):
            heading = line[5:].strip()
            threat = "Linf" if heading.startswith("Linf") else "L2" if heading.startswith("L2") else (
                "corruptions" if "orruptions" in heading else None)
        elif line.startswith("|") and dataset and threat:
            cells = [_MARKUP.sub("", cell).strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) >= 5 and cells[0].isdigit():
                try:
                    clean, robust = (float(cell.rstrip("%")) for cell in cells[3:5])
                except ValueError:
                    continue
                table[(dataset, threat, cells[1])] = ExpectedAccuracy(clean=clean, autoattack=robust)
    return table
