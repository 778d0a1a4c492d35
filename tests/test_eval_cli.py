"""`python -m harness eval` on checkpoints of every registered architecture."""

import json

import pytest
import torch

from harness.cli import main
from harness.data import get_dataset
from harness.models import MODELS, create_model

SYNTHETIC = get_dataset("synthetic")


def save_checkpoint(path, arch, num_classes=SYNTHETIC.num_classes, wrap=False):
    torch.manual_seed(0)
    model = create_model(arch, in_channels=3, num_classes=num_classes, image_size=16)
    state = model.state_dict()
    if wrap:
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return model


def check_schema(report, attacks, n_eval):
    assert report["dataset"] == "synthetic"
    assert report["n_eval"] == n_eval
    assert list(report["attacks"]) == attacks
    for metrics in report["attacks"].values():
        assert 0 <= metrics["worst"] <= metrics["worst10"] <= 100 and 0 <= metrics["avg"] <= 100
        assert metrics["nsd"] is None or metrics["nsd"] >= 0
        assert len(metrics["per_class"]) == 10
        assert len(metrics["confusion"]) == 10 and sum(map(sum, metrics["confusion"])) == n_eval
        assert metrics["target_entropy"] is None or 0 <= metrics["target_entropy"] <= 1
        low, high = metrics["worst_ci"]
        assert low <= high


@pytest.mark.parametrize("arch", MODELS.names())
def test_eval_every_architecture(tmp_path, arch, capsys):
    save_checkpoint(tmp_path / "model.pt", arch, wrap=arch.startswith("wrn"))
    out = tmp_path / "report.json"
    status = main(["eval", "--dataset", "synthetic", "--model", arch, "--checkpoint", str(tmp_path / "model.pt"),
                   "--attacks", "clean", "--n-eval", "10", "--out", str(out), "--quiet"])
    assert status == 0
    report = json.loads(out.read_text())
    check_schema(report, ["clean"], 10)
    printed = capsys.readouterr().out
    for row in ("class0", "Avg", "Worst", "NSD"):
        assert row in printed


def test_eval_all_attacks_matches_model(tmp_path, capsys):
    model = save_checkpoint(tmp_path / "model.pt", "resnet8")
    out = tmp_path / "report.json"
    attacks = ["clean", "fgsm", "pgd20", "cw", "aa"]
    assert main(["eval", "--dataset", "synthetic", "--model", "resnet8", "--checkpoint", str(tmp_path / "model.pt"),
                 "--attacks", ",".join(attacks), "--aa-version", "fast", "--n-eval", "30", "--out", str(out),
                 "--quiet"]) == 0
    report = json.loads(out.read_text())
    check_schema(report, attacks, 30)
    assert report["aa_version"] == "fast"
    assert "AA (fast)" in capsys.readouterr().out
    # the clean row is the model's own accuracy on the same stratified samples
    test = SYNTHETIC.load("test")
    from harness.data import stratified_indices

    indices = stratified_indices(test.targets, 30, 0)
    x = torch.stack([test[i][0] for i in indices.tolist()])
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1) == test.targets[indices]).float().mean().item() * 100
    assert report["attacks"]["clean"]["avg"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "checkpoint not found"),
        ("not-a-state-dict", "not a state dict"),
        ("wrong-arch", "does not fit architecture 'cnn5'"),
        ("wrong-classes", "the model has 5 outputs but synthetic has 10 classes"),
        ("bad-attack", "unknown attack 'pgd' (did you mean 'pgd20'?)"),
    ],
)
def test_eval_bad_input(tmp_path, capsys, case, expected):
    path = tmp_path / "model.pt"
    arch, attacks = "resnet8", "clean"
    if case == "not-a-state-dict":
        torch.save({"epoch": 3}, path)
    elif case == "wrong-arch":
        save_checkpoint(path, "resnet8")
        arch = "cnn5"
    elif case == "wrong-classes":
        save_checkpoint(path, "resnet8", num_classes=5)
    elif case == "bad-attack":
        save_checkpoint(path, "resnet8")
        attacks = "pgd"
    status = main(["eval", "--dataset", "synthetic", "--model", arch, "--checkpoint", str(path),
                   "--attacks", attacks, "--quiet", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "r.json").exists()
