"""Teacher training (PGD-AT / TRADES), resume after a kill, and the teacher loader."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.config import TeacherSpec, ThreatModel
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.models import create_model
from harness.data import augment_batch
from harness.teacher import load_teacher, sha256_of
from harness.teacher_training import load_training_config, trades_loss

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
dataset: synthetic
arch: resnet8
objective: {objective}
epochs: 3
batch_size: 50
threat: {{train_steps: 3}}
output: {output}
eval: {{attacks: [clean, pgd20], n_eval: 50}}
"""


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_recipe(tmp_path, name, objective="pgd-at"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(objective=objective, output=tmp_path / name))
    return path


def test_interrupted_training_resumes_and_matches_an_uninterrupted_run(tmp_path):
    straight = run_cli("teacher", "train", write_recipe(tmp_path, "straight"), "--quiet", "--device", "cpu")
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    recipe = write_recipe(tmp_path, "killed")
    state = tmp_path / "killed" / "train_state.pt"
    process = run_cli("teacher", "train", recipe, "--quiet", "--device", "cpu")
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "training finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done < 3

    resumed = run_cli("teacher", "train", recipe, "--quiet", "--device", "cpu")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"after epoch {done}/3" in err
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3]
    assert not state.exists()
    for name in ("resnet8.pt", "resnet8.pt.sha256", "config.yaml", "report.json", "report.md"):
        assert (tmp_path / "killed" / name).exists()
    # per-epoch seeding makes the resumed run identical to the uninterrupted one
    assert sha256_of(tmp_path / "killed" / "resnet8.pt") == sha256_of(tmp_path / "straight" / "resnet8.pt")
    assert report["sha256"] == sha256_of(tmp_path / "killed" / "resnet8.pt")
    assert set(report["attacks"]) == {"clean", "pgd20"} and report["n_eval"] == 50


def test_recipe_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: synthetic\narch: resnet8\nobjective: trade\n")
    process = run_cli("teacher", "train", bad)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert err.strip().splitlines() == [
        f"error: {bad}: objective: must be one of pgd-at, trades, got 'trade' (did you mean 'trades'?)"]


def test_recipe_defaults_resolve_the_dataset_budget(tmp_path):
    config = load_training_config(write_recipe(tmp_path, "r", "trades"))
    assert config.threat.epsilon == pytest.approx(8 / 255) and config.threat.train_steps == 3
    assert config.objective == "trades"


def test_trades_loss_reduces_to_cross_entropy_when_beta_is_zero():
    torch.manual_seed(0)
    model = create_model("resnet8", in_channels=3, num_classes=10, image_size=16).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    threat = ThreatModel(epsilon=0.03, step_size=0.01, train_steps=2)
    loss = trades_loss(model, x, y, threat, beta=0.0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
    assert trades_loss(model, x, y, threat, beta=6.0).item() >= loss.item() - 1e-6


def test_augment_crops_within_padding_and_flips_only_where_natural():
    x = torch.rand(8, 3, 16, 16)
    out = augment_batch(x, get_dataset("synthetic"), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output is a shifted copy: its non-padded content appears in the input
    assert any(torch.equal(out[i, :, 4:12, 4:12], x[i, :, 4 + dy:12 + dy, 4 + dx:12 + dx])
               for i in range(8) for dy in range(-2, 3) for dx in range(-2, 3))


def save(model, path, transform=lambda state: state):
    torch.save(transform(model.state_dict()), path)


def test_load_teacher_freezes_and_accepts_trades_and_dataparallel_layouts(tmp_path):
    cifar = get_dataset("cifar10")
    torch.manual_seed(0)
    model = create_model("wrn-34-10", in_channels=3, num_classes=10, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)

    def trades_layout(state):
        extra = {k.replace("block1.", "sub_block1.", 1): v for k, v in state.items() if k.startswith("block1.")}
        return {f"module.{k}": v for k, v in {**state, **extra}.items()}

    save(model, tmp_path / "trades.pt", trades_layout)
    teacher = load_teacher(TeacherSpec(arch="wrn-34-10", checkpoint=str(tmp_path / "trades.pt")), cifar)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        assert torch.equal(teacher(x), expected)


@pytest.mark.parametrize("problem", ["wrong-arch", "wrong-classes", "not-a-state-dict", "sha256"])
def test_load_teacher_errors(tmp_path, problem):
    info = get_dataset("synthetic")
    path = tmp_path / "teacher.pt"
    model = create_model("resnet8", in_channels=3, num_classes=10, image_size=16)
    arch, sha = "resnet8", None
    if problem == "wrong-arch":
        save(model, path)
        arch = "cnn5"
    elif problem == "wrong-classes":
        save(create_model("resnet8", in_channels=3, num_classes=7, image_size=16), path)
    elif problem == "not-a-state-dict":
        torch.save([1, 2, 3], path)
    else:
        save(model, path)
        sha = "0" * 64
    with pytest.raises(HarnessError) as info_error:
        load_teacher(TeacherSpec(arch=arch, checkpoint=str(path), sha256=sha), info)
    message = str(info_error.value)
    assert "\n" not in message and str(path) in message
