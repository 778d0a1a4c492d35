"""Every shipped experiment file validates, and the shipped teacher is what its report says."""

from pathlib import Path

import pytest
import torch

from harness.config import TeacherSpec, load_experiment
from harness.data import FASHION_MNIST_SYSTEM_DIR, get_dataset, stratified_indices
from harness.teacher import load_teacher, sha256_of
from harness.teacher_training import load_training_config

ROOT = Path(__file__).resolve().parents[1]
TEACHER_RECIPES = sorted((ROOT / "experiments" / "teachers").glob("*.yaml"))
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_validates(path):
    assert load_experiment(path).cells


# The paper's tables and figures: cells per file, and what each varies.
PAPER = {
    "cifar10_main": (12, {"student": {"resnet18", "mobilenetv2"},
                          "method": {"zskt", "deepinv", "cmi", "fast", "dfhl", "ferd"}}),
    "cifar100_main": (12, {"dataset": {"cifar100"}, "batch_size": {512}}),
    "tinyimagenet_main": (5, {"student": {"preactresnet18"}, "method": {"deepinv", "cmi", "fast", "dfhl", "ferd"}}),
    "cifar10_ablation": (5, {"method": {"ferd", "ferd-no-reweight", "ferd-no-fae", "ferd-no-utae",
                                        "ferd-no-fae-utae"}}),
    "cifar10_reweighting": (5, {"reweight": {"softmax", "power", "linear", "sigmoid", "tanh"}}),
    "cifar10_lambdas": (5, {"lambda_uni": {1.0, 5.0, 10.0}}),
    "cifar10_dfkd_vs_dfrd": (10, {"adversarial": {False, True}}),
    "cifar10_layer": (3, {"layer": {"block1", "block2", "bn1"}}),
    "cifar10_gamma": (6, {"gamma": {0.0, 0.1, 0.3, 0.5, 0.7, 0.9}}),
    "cifar10_epochs": (3, {"method": {"cmi", "dfhl", "ferd"}}),
    "cifar10_teacher_wrn34_20": (12, {"teacher": {"wrn-34-20"}}),
    "cifar10_fair_ard": (4, {"method": {"ard", "fair-ard"}}),
}


def _cell_values(cell, name):
    s = cell.settings
    plain = {"student": s.student, "method": cell.method, "dataset": s.dataset, "batch_size": s.schedule.batch_size,
             "adversarial": s.schedule.adversarial, "teacher": s.teacher.arch}
    return plain[name] if name in plain else getattr(cell.params, name)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_experiment_cells(name):
    cells = load_experiment(ROOT / "experiments" / f"{name}.yaml").cells
    count, varies = PAPER[name]
    assert len(cells) == count
    for key, values in varies.items():
        assert {_cell_values(cell, key) for cell in cells} == values, key
    for cell in cells:  # the paper's schedule (METHODS.md §0)
        schedule = cell.settings.schedule
        assert (schedule.epochs, schedule.warmup_epochs, schedule.generator_steps, schedule.student_steps) == (
            220, 20, 200, 400)
        assert schedule.batch_size == (256 if cell.settings.dataset == "cifar10" else 512)


def test_lambda_sweep_pairs_sum_to_one():
    cells = load_experiment(ROOT / "experiments" / "cifar10_lambdas.yaml").cells
    pairs = {(round(c.params.lambda_uni, 3), round(c.params.lambda_clean, 3)) for c in cells}
    assert pairs == {(1.0, 0.833), (5.0, 0.833), (10.0, 0.833), (5.0, 0.5), (5.0, 0.167)}
    assert all(c.params.lambda_clean + c.params.lambda_utae == pytest.approx(1.0) for c in cells)


@pytest.mark.parametrize("path", TEACHER_RECIPES, ids=lambda p: p.name)
def test_teacher_recipe_validates(path):
    assert load_training_config(path).epochs >= 1


def test_shipped_fashion_mnist_teacher(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_training_config("experiments/teachers/fashion-mnist.yaml")
    weights = Path(config.output) / f"{config.arch}.pt"
    recorded = (weights.parent / f"{weights.name}.sha256").read_text().split()[0]
    assert sha256_of(weights) == recorded
    info = get_dataset("fashion-mnist")
    teacher = load_teacher(TeacherSpec(arch=config.arch, checkpoint=str(weights), sha256=recorded), info)
    if not FASHION_MNIST_SYSTEM_DIR.exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    test = info.load("test")
    indices = stratified_indices(test.targets, 1000, 0)
    x = torch.stack([test[i][0] for i in indices.tolist()])
    with torch.no_grad():
        accuracy = (teacher(x).argmax(1) == test.targets[indices]).float().mean().item()
    assert accuracy >= 0.85
