"""``precision`` and ``compile``: bf16 autocast where training runs, fp32 evaluation always, and run
keys that do not move while the settings hold their defaults."""

import torch

from harness.trainer import Trainer, environment
from harness.config import load_experiment

GRID = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 1, warmup_epochs: 0, generator_steps: 1, student_steps: 2, batch_size: 8, history_every: 5}}
  threat: {{train_steps: 1}}
  eval: {{attacks: [clean, pgd20], n_eval: 10}}
  {extra}
grid:
  method: [cmi]
"""


def cell(tmp_path, teacher, extra=""):
    (tmp_path / "exp.yaml").write_text(GRID.format(teacher=teacher, extra=extra))
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    return spec


def test_defaults_stay_out_of_the_run_key(tmp_path, teacher_checkpoint):
    plain = cell(tmp_path, teacher_checkpoint)
    explicit = cell(tmp_path, teacher_checkpoint, "precision: fp32\n  compile: false")
    bf16 = cell(tmp_path, teacher_checkpoint, "precision: bf16")
    compiled = cell(tmp_path, teacher_checkpoint, "compile: true")
    assert plain.key == explicit.key and "precision" not in plain.identity()
    assert len({plain.key, bf16.key, compiled.key}) == 3 and bf16.identity()["precision"] == "bf16"


def test_bf16_trains_in_bf16_and_evaluates_in_fp32(tmp_path, teacher_checkpoint):
    spec = cell(tmp_path, teacher_checkpoint, "precision: bf16")
    trainer = Trainer(spec, tmp_path / "run", "cpu", progress=False)
    dtypes: dict[str, set] = {"train": set(), "eval": set()}
    phase = ["train"]
    trainer.student.register_forward_hook(lambda module, inputs, output: dtypes[phase[0]].add(output.dtype))
    probe = trainer._probe

    def probe_as_evaluation():  # the held-out probe of the last epoch is an evaluation too
        phase[0] = "eval"
        try:
            return probe()
        finally:
            phase[0] = "train"

    trainer._probe = probe_as_evaluation
    trainer.train()
    phase[0] = "eval"
    metrics = trainer.evaluate()
    assert dtypes["train"] == {torch.bfloat16}  # generator round (L_adv), attack, loss: all autocast
    assert dtypes["eval"] == {torch.float32} and set(metrics["attacks"]) == {"clean", "pgd20"}
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())  # master weights stay fp32


def test_environment_records_the_numerics_flags():
    env = environment(torch.device("cpu"))
    for key in ("cudnn", "cudnn_benchmark", "tf32_matmul", "tf32_cudnn", "deterministic_algorithms",
                "float32_matmul_precision"):
        assert key in env


def test_an_optimizer_step_inside_a_bf16_region_reaches_the_next_forward():
    """A generation round steps its optimizer inside one autocast region: no stale bf16 weight copy."""
    from harness.backbone.devices import autocast

    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    x = torch.ones(2, 4)
    with autocast("cpu", "bf16"):
        before = layer(x)
        before.float().sum().backward()
        optimizer.step()
        after = layer(x)
    assert before.dtype == torch.bfloat16 and not torch.equal(before, after)
