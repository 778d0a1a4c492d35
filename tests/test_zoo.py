"""Teachers as researchers have them: RobustBench's zoo by name, input normalisation, `teacher check`.

A tiny zoo entry (RobustBench's own WideResNet class at depth 10, width 1) is registered in the
installed package's model table and its weights saved under RobustBench's file layout in a
temporary ``model_dir``: everything after that — finding the file, building the architecture,
loading the weights — is RobustBench's code.
"""

import argparse
import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from harness import cli
from harness.config import ExpectedAccuracy, Normalize, TeacherSpec, load_experiment
from harness.data import get_dataset
from harness.errors import HarnessError
from harness.models import create_model
from harness.models.foreign import ForeignClassifier
from harness.teacher import load_teacher
from harness.teacher_check import check_teacher, distinct_teachers, expected_accuracy
from harness.trainer import train_cell
from harness.zoo import leaderboard_entry, parse_leaderboard, robustbench

CIFAR, SYNTHETIC = get_dataset("cifar10"), get_dataset("synthetic")
TINY = "Tiny2026Test"


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """``tmp_path/models`` holding the tiny entry at ``cifar10/Linf/Tiny2026Test.pt``; returns
    (model_dir, the zoo's module with those weights)."""
    rb = robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    table = rb.models[rb.Dataset("cifar10")][rb.Threat("Linf")]
    monkeypatch.setitem(table, TINY, {"model": lambda: WideResNet(depth=10, widen_factor=1, sub_block1=True),
                                      "gdrive_id": "not-downloaded-in-tests"})
    torch.manual_seed(0)
    net = WideResNet(depth=10, widen_factor=1, sub_block1=True)
    for module in net.modules():  # non-trivial BatchNorm statistics, so that eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    model_dir = tmp_path / "models"
    (model_dir / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, model_dir / "cifar10" / "Linf" / f"{TINY}.pt")
    return model_dir, net.eval()


def test_zoo_teacher_loads_by_name_with_the_zoo_predictions_and_feature_layers(zoo):
    model_dir, net = zoo
    teacher = load_teacher(TeacherSpec(robustbench=TINY, model_dir=str(model_dir)), CIFAR)
    assert isinstance(teacher, ForeignClassifier) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(teacher(x), expected, rtol=1e-4, atol=1e-5)
        features = teacher.features(x, "bn1")
        kept = features.clone()
        torch.testing.assert_close(teacher.head(features, "bn1"), expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(features, kept)  # the plan's ReLU is not in place
        logits, blocks = teacher.forward_blocks(x)
    assert [b.shape[1] for b in blocks] == [16, 32, 64]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    # the BatchNorm layers the forward runs, in that order: not the unused sub_block1's
    used = [f"net.{name}" for name, m in net.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) and not name.startswith("sub_block1")]
    assert len(used) < sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    names = {id(m): name for name, m in teacher.named_modules()}
    assert [names[id(m)] for m in teacher.bn_layers()] == used


def test_a_zoo_module_without_a_stage_plan_names_what_a_method_needs():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    model = ForeignClassifier(net, "robustbench:Other", (3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), net(x))
    with pytest.raises(HarnessError, match=r"robustbench:Other \(Sequential\) exposes no feature layers"):
        model.features(x, "bn1")
    with pytest.raises(HarnessError, match="exposes no feature layers"):
        model.forward_blocks(x)


def _zoo_experiment(tmp_path, model_dir, method, extra=""):
    (tmp_path / "exp.yaml").write_text(f"""
name: zoo
base:
  dataset: synthetic
  student: resnet8
  method: {method}
  teacher: {{robustbench: {TINY}, zoo_dataset: cifar10, model_dir: {model_dir}{extra}}}
  schedule: {{epochs: 1, warmup_epochs: 0, generator_steps: 2, student_steps: 2, batch_size: 8,
              pool_size: 64, probe_n: 20}}
  threat: {{train_steps: 2}}
  eval: {{attacks: [clean, pgd20], n_eval: 20, batch_size: 20}}
methods: {{ferd: {{ib_steps: 2, reweight_steps: 2}}}}
""")
    return load_experiment(tmp_path / "exp.yaml")


@pytest.mark.parametrize("method", ["ferd", "deepinv", "cmi"])  # features/head; BatchNorm statistics and means
def test_zoo_teacher_distils_for_one_epoch(zoo, tmp_path, method):
    model_dir, _ = zoo
    (spec,) = _zoo_experiment(tmp_path, model_dir, method).cells
    metrics = train_cell(spec, tmp_path / "run", progress=False)
    assert set(metrics["attacks"]) == {"clean", "pgd20"}
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["teacher"] == {"arch": None, "checkpoint": None, "sha256": None, "robustbench": TINY,
                                 "zoo_dataset": "cifar10"}  # model_dir is a path, not part of the key
    assert type(spec).from_dict(stored).key == spec.key


def test_zoo_key_excludes_paths_and_notes_but_not_the_entry(zoo, tmp_path):
    model_dir, _ = zoo
    (plain,) = _zoo_experiment(tmp_path, model_dir, "noise").cells
    (noted,) = _zoo_experiment(tmp_path, tmp_path, "noise", ", expected: {clean: 50}").cells
    assert plain.key == noted.key
    (arch,) = load_experiment_text(tmp_path, "{arch: wrn-34-10}").cells
    assert arch.key != plain.key


def load_experiment_text(tmp_path, teacher):
    (tmp_path / "other.yaml").write_text(f"base: {{dataset: synthetic, student: resnet8, method: noise, "
                                         f"teacher: {teacher}}}\n")
    return load_experiment(tmp_path / "other.yaml")


def test_unknown_zoo_name_gets_did_you_mean(zoo, tmp_path):
    model_dir, _ = zoo
    with pytest.raises(HarnessError, match=r"teacher\.robustbench: RobustBench has no cifar10 Linf model "
                                           r"'Tiny2026Tset' \(did you mean 'Tiny2026Test'\?\)"):
        (tmp_path / "exp.yaml").write_text(f"""
base: {{dataset: synthetic, student: resnet8, method: noise,
        teacher: {{robustbench: Tiny2026Tset, zoo_dataset: cifar10, model_dir: {model_dir}}}}}
""")
        load_experiment(tmp_path / "exp.yaml")


def test_a_missing_zoo_file_is_one_line_and_never_downloaded_by_a_worker(zoo, tmp_path):
    model_dir, _ = zoo
    (model_dir / "cifar10" / "Linf" / f"{TINY}.pt").unlink()
    with pytest.raises(HarnessError, match=r"Tiny2026Test\.pt: RobustBench model file not found"):
        load_teacher(TeacherSpec(robustbench=TINY, model_dir=str(model_dir)), CIFAR)


def test_a_pickled_zoo_file_is_refused_before_robustbench_opens_it(zoo):
    model_dir, _ = zoo
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "extra": argparse.Namespace(x=1)},
               model_dir / "cifar10" / "Linf" / f"{TINY}.pt")
    with pytest.raises(HarnessError, match="not a loadable PyTorch checkpoint"):
        load_teacher(TeacherSpec(robustbench=TINY, model_dir=str(model_dir)), CIFAR)


def test_without_the_extra_a_zoo_teacher_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "robustbench" else real(name, *a))
    (tmp_path / "exp.yaml").write_text("""
base: {dataset: cifar10, student: resnet8, method: noise, teacher: {robustbench: Zhang2019Theoretically}}
""")
    assert cli.main(["validate", str(tmp_path / "exp.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'exp.yaml'}: base.teacher.robustbench: a robustbench teacher needs the "
                   "robustbench package: pip install -e '.[robustbench]'\n")


def test_leaderboard_figures_come_from_the_installed_package():
    text = """### CIFAR-10
#### Linf, eps=8/255
| <sub>#</sub> | <sub>Model ID</sub> | <sub>Paper</sub> | <sub>Clean accuracy</sub> | <sub>Robust accuracy</sub> |
|:---:|---|---|:---:|:---:|
| <sub>**7**</sub> | <sub><sup>**Some2020Model**</sup></sub> | <sub>*[A paper](x)*</sub> | <sub>81.50%</sub> | <sub>50.25%</sub> |
#### L2, eps=0.5
| <sub>**1**</sub> | <sub><sup>**Some2020Model**</sup></sub> | <sub>*[A paper](x)*</sub> | <sub>90.00%</sub> | <sub>70.00%</sub> |
### CIFAR-100
#### Linf, eps=8/255
| <sub>**2**</sub> | <sub><sup>**Some2020Model**</sup></sub> | <sub>*[A paper](x)*</sub> | <sub>60.00%</sub> | <sub>30.00%</sub> |
"""
    table = parse_leaderboard(text)
    assert table == {("cifar10", "Linf", "Some2020Model"): ExpectedAccuracy(clean=81.5, autoattack=50.25),
                     ("cifar10", "L2", "Some2020Model"): ExpectedAccuracy(clean=90.0, autoattack=70.0),
                     ("cifar100", "Linf", "Some2020Model"): ExpectedAccuracy(clean=60.0, autoattack=30.0)}
    # the paper's TRADES WRN-34-10 teacher, as the installed robustbench 1.1.1 ranks it
    assert leaderboard_entry(TeacherSpec(robustbench="Zhang2019Theoretically"), CIFAR) == ExpectedAccuracy(
        clean=84.92, autoattack=53.08)


# --------------------------------------------------------------------------- normalisation
def test_a_checkpoint_trained_with_normalisation_predicts_as_the_original_through_normalize(tmp_path):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    torch.manual_seed(0)
    original = create_model("cnn5", in_channels=3, num_classes=10, image_size=32, input_mean=mean,
                            input_std=std).eval()
    torch.save(original.state_dict(), tmp_path / "t.pt")  # the statistics are not in the file
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        expected = original(x)
        loaded = load_teacher(TeacherSpec(arch="cnn5", checkpoint=str(tmp_path / "t.pt"),
                                          normalize=Normalize(mean, std)), CIFAR)
        raw = load_teacher(TeacherSpec(arch="cnn5", checkpoint=str(tmp_path / "t.pt")), CIFAR)
        torch.testing.assert_close(loaded(x), expected)
        assert not torch.allclose(raw(x), expected, atol=1e-3)


def test_normalize_enters_the_run_key_only_when_set(tmp_path):
    def key(teacher):
        (cell,) = load_experiment_text(tmp_path, teacher).cells
        return cell.key, cell.identity()["teacher"]

    plain, identity = key("{arch: cnn5}")
    assert identity == {"arch": "cnn5", "checkpoint": None, "sha256": None}  # as stored runs have it
    assert key("{arch: cnn5, expected: {clean: 80}}")[0] == plain
    normalized, identity = key("{arch: cnn5, normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}")
    assert normalized != plain and identity["normalize"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(HarnessError, match=r"base\.teacher\.normalize\.mean: 1 values for the 3 channels"):
        key("{arch: cnn5, normalize: {mean: [0.5], std: [0.25]}}")
    with pytest.raises(HarnessError, match=r"base\.teacher\.arch: give either arch"):
        key("{arch: cnn5, robustbench: Zhang2019Theoretically}")


# --------------------------------------------------------------------------- teacher check
def _check_experiment(tmp_path, checkpoint, expected=""):
    (tmp_path / "exp.yaml").write_text(f"""
base: {{dataset: synthetic, student: resnet8, method: noise,
        teacher: {{arch: cnn5, checkpoint: {checkpoint}{expected}}}}}
grid: {{seed: [0, 1], method: [noise, cmi]}}
""")
    return load_experiment(tmp_path / "exp.yaml")


def test_teacher_check_compares_with_the_expected_block_and_warns_when_clean_is_off(tmp_path, teacher_checkpoint):
    experiment = _check_experiment(tmp_path, teacher_checkpoint)
    (teacher,) = distinct_teachers(experiment.cells)  # four cells, one teacher
    measured = check_teacher(teacher, n=40, progress=False)
    assert measured.n == 40 and measured.expected is None and measured.warning is None
    assert 0 <= measured.pgd20 <= measured.clean <= 100
    assert measured.lines()[3] == "  expected unknown (add teacher.expected: {clean: …, pgd20: …} to compare)"
    for offset, warned in ((2.5, False), (-3.5, True)):
        noted = _check_experiment(tmp_path, teacher_checkpoint,
                                  f", expected: {{clean: {measured.clean - offset}, pgd20: 9}}")
        (with_note,) = distinct_teachers(noted.cells)
        expected, source = expected_accuracy(with_note, measured.sha256)
        assert (expected, source) == (ExpectedAccuracy(clean=measured.clean - offset, pgd20=9), "teacher.expected")
        lines = replace(measured, teacher=with_note, expected=expected, expected_source=source).lines()
        assert lines[3] == f"  expected clean {measured.clean - offset:.2f} %, PGD-20 9.00 % (teacher.expected)"
        assert len(lines) == 4 + warned
    assert lines[4] == (f"  warning: clean accuracy {measured.clean:.2f} % is 3.50 points below the expected "
                        f"{measured.clean + 3.5:.2f} % (check teacher.normalize, the dataset and the architecture)")


def test_teacher_check_reads_the_training_report_beside_a_checkpoint_with_the_same_hash(tmp_path, teacher_checkpoint):
    from harness.teacher import sha256_of

    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "cnn5.pt").write_bytes(teacher_checkpoint.read_bytes())
    report = {"sha256": sha256_of(folder / "cnn5.pt"), "dataset": "synthetic", "n_eval": 100,
              "aa_version": "fast", "attacks": {"clean": {"avg": 11.0}, "pgd20": {"avg": 5.0},
                                                "aa": {"avg": 4.0, "n": 50}}}
    (folder / "report.json").write_text(json.dumps(report))
    (teacher,) = distinct_teachers(_check_experiment(tmp_path, folder / "cnn5.pt").cells)
    result = check_teacher(teacher, n=20, progress=False)
    assert result.expected == ExpectedAccuracy(clean=11.0, pgd20=5.0, autoattack=4.0)
    assert result.lines()[3].endswith("(" + str(folder / "report.json") + ": 100 test images; AutoAttack fast on 50)")
    (folder / "report.json").write_text(json.dumps({**report, "sha256": "0" * 64}))  # another file's report
    assert check_teacher(teacher, n=20, progress=False).expected is None


def test_teacher_check_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["teacher", "check", "--teacher", "{arch: cnn5, checkpoint: missing.pt}",
                     "--dataset", "synthetic"]) == 2
    assert capsys.readouterr().err == "error: missing.pt: checkpoint not found\n"
    assert cli.main(["teacher", "check", "--teacher", "{arch: cnn5}"]) == 2
    assert capsys.readouterr().err == "error: teacher check: --teacher needs --dataset\n"
    assert cli.main(["teacher", "check"]) == 2
    assert "one of them" in capsys.readouterr().err


def test_run_refuses_a_grid_whose_zoo_file_is_missing_before_writing_anything(zoo, tmp_path, capsys):
    model_dir, _ = zoo
    _zoo_experiment(tmp_path, model_dir, "noise")
    (model_dir / "cifar10" / "Linf" / f"{TINY}.pt").unlink()
    exp, results = tmp_path / "exp.yaml", tmp_path / "results"
    assert cli.main(["run", str(exp), "--results", str(results), "--quiet", "--device", "cpu"]) == 2
    path = model_dir / "cifar10" / "Linf" / f"{TINY}.pt"
    assert capsys.readouterr().err == (f"error: {exp}: teacher.robustbench: file not found: {path} (place it "
                                       f"there, or let `python -m harness teacher check {exp}` download it)\n")
    assert not results.exists()
