"""The command line as a user meets it: `python -m harness ...` — in a subprocess for the exit
status and the streams a shell sees, and in-process (``harness.cli.main``, which is all
``__main__`` calls) for the many messages, which would otherwise pay a torch import each."""

import io
import os
import re
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]

VALID = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {arch: cnn5}
  schedule: {epochs: 2, warmup_epochs: 0}
grid:
  method: [toy, toy-zero, toy-code]
  seed: [0, 1]
"""


def harness_subprocess(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_PLUGINS": "tests.toy_method"}
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def harness(*args, cwd):
    """``harness.cli.main(ARGS)`` run in ``cwd``, its exit status and output as a subprocess's."""
    out, err, previous = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as stop:  # argparse: --help, usage errors
                code = stop.code
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_help_lists_subcommands(tmp_path):
    result = harness_subprocess("--help", cwd=tmp_path)
    assert result.returncode == 0
    for name in ("list", "validate"):
        assert name in result.stdout


def test_every_subcommand_prints_its_help(tmp_path):
    """argparse %-formats help strings: a bare "95 %" in one of them breaks ``--help`` of the whole program."""
    from harness.cli import _COMMANDS

    for name, *_ in _COMMANDS:
        result = harness(name, "--help", cwd=tmp_path)
        assert result.returncode == 0, (name, result.stderr)
        assert "usage:" in result.stdout


def test_bad_input_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "exp.yaml").write_text(VALID.replace("cnn5", "cnn6"))
    result = harness_subprocess("validate", "exp.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: exp.yaml: base.teacher.arch: unknown model 'cnn6' (did you mean 'cnn5'?)\n"


def test_list_names(tmp_path):
    models = harness("list", "models", cwd=tmp_path).stdout.split()
    for name in ("resnet18", "mobilenetv2", "wrn-34-10", "wrn-34-20", "preactresnet18", "preactresnet34",
                 "cnn5", "resnet8", "mobilenetv2-tiny"):
        assert name in models
    datasets = harness("list", "datasets", cwd=tmp_path).stdout.split()
    assert datasets == ["cifar10", "cifar100", "tinyimagenet", "fashion-mnist", "synthetic"]
    methods = harness("list", "methods", cwd=tmp_path).stdout.split()
    assert {"toy", "toy-zero", "toy-code"} <= set(methods)


def test_validate_prints_cell_count(tmp_path):
    (tmp_path / "exp.yaml").write_text(VALID)
    result = harness("validate", "exp.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exp.yaml: 6 cells (experiment 'exp')"
    verbose = harness("validate", "-v", "exp.yaml", cwd=tmp_path).stdout.splitlines()
    assert len(verbose) == 7
    assert re.fullmatch(r"exp/synthetic/toy/resnet8/seed0-[0-9a-f]{10}", verbose[0])


BAD = {
    "unknown-method": (VALID.replace("toy-code", "toy-cod"), "grid.method[2]: unknown method 'toy-cod' (did you mean 'toy-code'?)"),
    "unknown-model": (VALID.replace("cnn5", "cnn6"), "base.teacher.arch: unknown model 'cnn6' (did you mean 'cnn5'?)"),
    "unknown-dataset": (VALID.replace("synthetic", "fashion_mnist"), "unknown dataset 'fashion_mnist' (did you mean 'fashion-mnist'?)"),
    "unknown-key": (VALID.replace("warmup_epochs", "warmup"), "base.schedule.warmup: unknown key (did you mean 'warmup_epochs'?)"),
    "wrong-type": (VALID.replace("epochs: 2", "epochs: [2]"), "base.schedule.epochs: expected an integer, got list [2]"),
    "negative-epsilon": (VALID + "  threat.epsilon: [-0.1]\n", "grid.threat.epsilon[0]: must be > 0, got -0.1"),
    "zero-epochs": (VALID.replace("epochs: 2", "epochs: 0"), "base.schedule.epochs: must be >= 1, got 0"),
    "yaml-syntax": (VALID.replace("{arch: cnn5}", "{arch: cnn5"), "YAML syntax error"),
    "null-schedule": (VALID.replace("{epochs: 2, warmup_epochs: 0}", "null"),
                      "base.schedule: is null: leave the key out for its defaults (epochs 220, warmup_epochs 20"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    text, expected = BAD[case]
    (tmp_path / "exp.yaml").write_text(text)
    before = sorted(tmp_path.rglob("*"))
    result = harness("validate", "exp.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: exp.yaml")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_missing_file_and_include_cycle(tmp_path):
    result = harness("validate", "nope.yaml", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, "error: nope.yaml: file not found\n")
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    result = harness("validate", "a.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: b.yaml: include: include cycle (a.yaml -> b.yaml -> a.yaml)"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = textwrap.dedent(readme.split("```bash", 1)[1].split("```", 1)[0]).strip().splitlines()
    assert len(block) == 2
    assert "pytest" in block[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert block[1] in ci


def test_teachers_are_checked_once_at_validate_and_run_with_nothing_written(tmp_path):
    import torch

    from harness.models import create_model

    torch.save(create_model("resnet8", in_channels=3, num_classes=10, image_size=16).state_dict(),
               tmp_path / "resnet8.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    torch.save(create_model("cnn5", in_channels=3, num_classes=10, image_size=16).state_dict(), tmp_path / "cnn5.pt")
    cases = {
        "missing.pt": "teacher.checkpoint: file not found: missing.pt",
        "notes.pt": "teacher.checkpoint: notes.pt: not a loadable PyTorch checkpoint",
        "resnet8.pt": "teacher.checkpoint: resnet8.pt: does not fit architecture 'cnn5'",
        "cnn5.pt, sha256: '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'":
            "teacher.checkpoint: cnn5.pt: SHA-256",
    }
    for checkpoint, expected in cases.items():
        (tmp_path / "exp.yaml").write_text(VALID.replace("{arch: cnn5}", f"{{arch: cnn5, checkpoint: {checkpoint}}}"))
        before = sorted(tmp_path.rglob("*"))
        for command in ("validate", "run"):
            result = harness(command, "exp.yaml", cwd=tmp_path)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert lines[0].startswith(f"error: exp.yaml: {expected}"), lines[0]
            assert sorted(tmp_path.rglob("*")) == before  # nothing written
    # one line per problem, each teacher checked once however many cells use it
    (tmp_path / "exp.yaml").write_text(VALID.replace("  teacher: {arch: cnn5}\n", "") +
                                       "  teacher: [{arch: cnn5, checkpoint: missing.pt}, {arch: cnn5, checkpoint: notes.pt}]\n")
    result = harness("validate", "exp.yaml", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 2, result.stderr
    (tmp_path / "exp.yaml").write_text(VALID.replace("{arch: cnn5}", "{arch: cnn5, checkpoint: cnn5.pt}"))
    assert harness("validate", "exp.yaml", cwd=tmp_path).returncode == 0


def test_run_says_how_many_cells_and_steps_it_launches(tmp_path):
    from harness.cli import _launch_summary
    from harness.config import load_experiment

    (tmp_path / "exp.yaml").write_text(VALID.replace("{epochs: 2, warmup_epochs: 0}",
                                                     "{epochs: 3, warmup_epochs: 1, student_steps: 7, generator_steps: 5}"))
    experiment = load_experiment(tmp_path / "exp.yaml")
    text = _launch_summary(experiment, tmp_path / "results", "cached", "exp.yaml")
    # 6 cells × (3 − 1 warm-up) epochs × 7 student steps; 6 × 3 epochs × 5 generator steps
    assert text == ("exp: 6 of 6 cells to run: 84 student steps and 90 generator steps in all "
                    "(FLOPs and GPU-hours: python -m harness cost exp.yaml)")
