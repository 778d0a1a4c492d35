"""``harness cost``: FLOPs counted on the meta device against a hand count, the CLI table, the
activation meter."""

import json

import pytest
import torch

from harness.cli import main
from harness.config import load_experiment
from harness.estimate import ActivationMeter, estimate_cell

GRID = """
base:
  dataset: synthetic
  student: linear-toy
  teacher: {{arch: linear-toy}}
  schedule: {{epochs: {epochs}, warmup_epochs: {warmup}, generator_steps: 3, student_steps: {steps},
              batch_size: {batch}}}
  threat: {{train_steps: {attack_steps}}}
  eval: {{attacks: [clean, pgd20], n_eval: {n_eval}}}
grid:
  method: [noise]
"""


def test_noise_cell_flops_equal_a_hand_count(tmp_path):
    epochs, warmup, steps, batch, attack_steps, n_eval = 5, 2, 7, 12, 4, 30
    (tmp_path / "exp.yaml").write_text(GRID.format(epochs=epochs, warmup=warmup, steps=steps, batch=batch,
                                                   attack_steps=attack_steps, n_eval=n_eval))
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    cost = estimate_cell(spec)
    inputs, classes = 3 * 16 * 16, 10  # the synthetic dataset's images, through one linear layer
    linear = 2 * inputs * classes  # FLOPs of one image through it, forward (2 per multiply-add)
    # one student step: teacher forward; KL-PGD, each step a forward and an input-gradient pass
    # (the student's weights frozen); the RSLAD loss, two forwards and two weight-gradient passes
    step = batch * linear * (1 + 2 * attack_steps + 4)
    assert cost.synthesis_flops == 0 and cost.student_step_flops == step
    # evaluation: clean, one forward; PGD-20, 20 forward + input-gradient passes and a forward
    evaluation = n_eval * linear * (1 + 2 * 20 + 1)
    assert cost.evaluation_flops == evaluation
    assert cost.total_flops == (epochs - warmup) * steps * step + evaluation
    assert cost.gpu_hours(1.0) == pytest.approx(cost.total_flops / 1e12 / 3600)


def test_cost_prints_a_row_per_cell_and_the_total(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(GRID.format(epochs=2, warmup=0, steps=1, batch=4, attack_steps=1, n_eval=10)
                                       .replace("method: [noise]", "method: [noise, cmi]\n  seed: [0, 1]")
                                       .replace("linear-toy}", "cnn5}"))
    out = tmp_path / "cost.json"
    assert main(["cost", str(tmp_path / "exp.yaml"), "--tflops", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "noise/linear-toy s0" in text and "cmi/linear-toy s1" in text
    assert "4 cells:" in text and "2 TFLOP/s sustained (--tflops)" in text
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 4 and all(c["total_flops"] > 0 for c in cells)
    cmi = next(c for c in cells if c["label"].startswith("cmi"))
    assert cmi["synthesis_flops"] > 0 and cmi["state_bytes"] > 0  # projection head, bank, pool


def test_bad_throughput_is_one_line(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(GRID.format(epochs=2, warmup=0, steps=1, batch=4, attack_steps=1, n_eval=10))
    assert main(["cost", str(tmp_path / "exp.yaml"), "--tflops", "0"]) == 2
    assert "--tflops" in capsys.readouterr().err


def test_activation_meter_counts_what_autograd_keeps():
    weight = torch.nn.Parameter(torch.ones(8, 8))
    x = torch.ones(4, 8, requires_grad=True)
    with ActivationMeter() as meter:
        hidden = (x @ weight).relu()  # keeps x (the weight is a parameter, not counted) and the relu output
        loss = hidden.sum()
    assert meter.peak == 4 * 8 * 4 * 2
    loss.backward()
    assert meter.live == 0


def test_zskt_reference_mode_spreads_its_generator_step_over_n_s_student_steps(tmp_path):
    """ZSKT's reference mode generates inside ``sample`` on every n_s-th step: the estimate's mean
    student step times n_s equals the FLOPs of n_s consecutive steps counted one by one."""
    from harness.estimate import _flops, probe_trainer

    text = GRID.format(epochs=2, warmup=0, steps=4, batch=6, attack_steps=1, n_eval=10).replace(
        "student: linear-toy", "student: resnet8").replace("arch: linear-toy", "arch: cnn5").replace(
        "method: [noise]", "method: [zskt]\nmethods:\n  zskt: {n_s: 3}")
    (tmp_path / "exp.yaml").write_text(text)
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    assert spec.params.mode == "reference"
    cost = estimate_cell(spec)
    trainer = probe_trainer(spec, tmp_path / "probe", 1)
    trainer.student.train()
    generator = torch.Generator().manual_seed(0)
    counted = [_flops(lambda: trainer.student_step(generator))[0] for _ in range(3)]
    assert counted[0] > counted[1] == counted[2]  # the first of the group generates
    assert cost.synthesis_flops == 0
    assert 3 * cost.student_step_flops == pytest.approx(sum(counted), rel=1e-9)


def test_a_bf16_cell_is_counted_like_its_fp32_twin(tmp_path):
    """Autocast does not run on the meta device; a bf16 cell does the same operations."""
    text = GRID.format(epochs=2, warmup=0, steps=3, batch=6, attack_steps=1, n_eval=10)
    (tmp_path / "fp32.yaml").write_text(text)
    (tmp_path / "bf16.yaml").write_text(text.replace("  eval:", "  precision: bf16\n  eval:"))
    (fp32,) = load_experiment(tmp_path / "fp32.yaml").cells
    (bf16,) = load_experiment(tmp_path / "bf16.yaml").cells
    assert bf16.settings.precision == "bf16" and bf16.key != fp32.key
    assert estimate_cell(bf16).total_flops == estimate_cell(fp32).total_flops
