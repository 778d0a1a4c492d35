"""Every shipped experiment file validates, and the shipped teacher is what its report says."""

from pathlib import Path

import pytest
import torch

from harness.config import TeacherSpec, load_experiment
from harness.data import FASHION_MNIST_SYSTEM_DIR, get_dataset, stratified_indices
from harness.teacher import load_teacher, load_training_config, sha256_of

ROOT = Path(__file__).resolve().parents[1]
TEACHER_RECIPES = sorted((ROOT / "experiments" / "teachers").glob("*.yaml"))
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_validates(path):
    assert load_experiment(path).cells


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
