"""Shared DFRD machinery: BN-statistics hooks, generator, pool, cost, trainer and resume."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from harness.backbone.bn_hooks import BNStatistics
from harness.backbone.cost import Cost
from harness.backbone.generator import Generator
from harness.backbone.pool import ImagePool
from harness.trainer import Trainer, cpu_name
from harness.config import load_experiment
from harness.data import get_dataset
from harness.models import create_model
from tests.e2e import (
    harness_process,
    history_of,
    kill_at_first_checkpoint,
    run_experiment,
    run_folder,
    start_run,
    write_experiment,
)


def test_bn_statistics_equal_a_manual_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(6, 3, 8, 8)
    stats = BNStatistics(model)
    with stats.record():
        model(x)
    loss = stats.loss()
    first = model[0](x)
    second = model[3](model[2](model[1](first)))
    expected = 0.0
    for inputs, layer in ((first, model[1]), (second, model[4])):
        mean = inputs.permute(1, 0, 2, 3).reshape(inputs.shape[1], -1).mean(1)
        var = ((inputs - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        expected += torch.sqrt(((mean - layer.running_mean) ** 2).sum()) + torch.sqrt(((var - layer.running_var) ** 2).sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    model(x)  # outside record(): ignored
    with pytest.raises(RuntimeError):
        stats.loss()


def test_bn_statistics_momentum_blends_rounds():
    model = nn.Sequential(nn.BatchNorm2d(1)).eval()
    stats = BNStatistics(model, momentum=0.9)
    ones, threes = torch.ones(2, 1, 2, 2), 3 * torch.ones(2, 1, 2, 2)
    with stats.record():
        model(ones)
    assert stats.loss().item() == pytest.approx(abs(1 - 0) + abs(0 - 1))  # mean 1 vs 0, var 0 vs 1
    stats.end_round()
    with stats.record():
        model(threes)
    blended_mean = 0.9 * 1 + 0.1 * 3
    assert stats.loss().item() == pytest.approx(blended_mean + 1.0)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 64), (3, 16)])
def test_generator_shapes_and_range(channels, size):
    generator = Generator(nz=100, channels=channels, image_size=size)
    images = generator(torch.randn(4, 100))
    assert images.shape == (4, channels, size, size)
    assert images.min() >= 0 and images.max() <= 1
    before = [p.clone() for p in generator.parameters()]
    generator.reset()
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))


def test_pool_is_bounded_fifo_and_samples_in_range():
    info = get_dataset("synthetic")
    pool = ImagePool(capacity=10, info=info)
    pool.add(torch.zeros(6, 3, 16, 16), torch.arange(6))
    pool.add(torch.ones(6, 3, 16, 16))
    assert len(pool) == 10
    # a ring: the second batch fills slots 6–9, then overwrites the two oldest (slots 0, 1)
    assert pool.labels.tolist() == [-1, -1, 2, 3, 4, 5, -1, -1, -1, -1]
    assert pool.images[:2].eq(1).all() and pool.images[2:6].eq(0).all() and pool.images[6:].eq(1).all()
    x, y = pool.sample(32, torch.Generator().manual_seed(0), augment=False)
    assert x.dtype == torch.float32 and x.shape == (32, 3, 16, 16)
    assert set(x.flatten().unique().tolist()) <= {0.0, 1.0}
    restored = ImagePool(capacity=10, info=info)
    restored.load_state_dict(pool.state_dict())
    assert torch.equal(restored.images, pool.images)
    pool.add(torch.full((3, 3, 16, 16), 0.5), torch.tensor([7, 8, 9]))
    restored.add(torch.full((3, 3, 16, 16), 0.5), torch.tensor([7, 8, 9]))  # continues where the saved pool was
    assert torch.equal(restored.labels, pool.labels) and pool.labels[2:5].tolist() == [7, 8, 9]
    big = ImagePool(capacity=4, info=info)
    big.add(torch.rand(9, 3, 16, 16), torch.arange(9))  # larger than the pool: its newest images stay
    assert sorted(big.labels.tolist()) == [5, 6, 7, 8]


def test_pool_writes_in_place_on_its_device():
    """The pool is preallocated where the student trains: adding never copies it, sampling never leaves it."""
    info = get_dataset("synthetic")
    on_cpu = ImagePool(capacity=8, info=info)
    on_cpu.add(torch.rand(3, 3, 16, 16))
    storage = on_cpu.images.untyped_storage().data_ptr()
    for _ in range(4):
        on_cpu.add(torch.rand(3, 3, 16, 16))
    assert on_cpu.images.untyped_storage().data_ptr() == storage
    pool = ImagePool(capacity=8, info=info, device="meta")
    pool.add(torch.rand(3, 3, 16, 16), torch.arange(3))  # a CPU batch lands on the pool's device
    pool.add(torch.rand(3, 3, 16, 16).to("meta"))
    assert pool.images.device.type == "meta"
    x, y = pool.sample(4, torch.Generator().manual_seed(0))
    assert x.device.type == "meta" and y.device.type == "meta" and x.dtype == torch.float32


def test_cost_counts_teacher_queries():
    teacher = create_model("resnet8", in_channels=3, num_classes=10, image_size=16).eval().requires_grad_(False)
    cost = Cost()
    cost.watch_teacher(teacher)
    x = torch.rand(5, 3, 16, 16, requires_grad=True)
    teacher(x).sum().backward()
    with torch.no_grad():
        teacher(torch.rand(3, 3, 16, 16))
    assert (cost.teacher_forward_images, cost.teacher_backward_images) == (8, 5)


EXPERIMENT = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 3, warmup_epochs: 1, generator_steps: 2, student_steps: {steps}, batch_size: 16,
              history_every: 1, probe_n: 20}}
  threat: {{train_steps: 2}}
  eval: {{attacks: [clean, pgd20], n_eval: 40}}
grid:
  method: [noise]
"""


def test_run_writes_the_run_folder_and_skips_done_cells(tmp_path, teacher_checkpoint):
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, steps=2))
    run_experiment(tmp_path)
    folder = run_folder(tmp_path / "results", "noise")
    for name in ("config.json", "status.json", "history.jsonl", "cost.json", "metrics.json", "env.json",
                 "checkpoints/last.pt", "samples.npz", "synthetic.npz"):
        assert (folder / name).exists(), name
    gallery = np.load(folder / "synthetic.npz")
    assert gallery["images"].dtype == np.uint8 and gallery["images"].shape[1:] == (3, 16, 16)
    assert len(gallery["images"]) == len(gallery["teacher_labels"]) <= 8 * 10
    assert np.bincount(gallery["teacher_labels"]).max() <= 8 and gallery["draw_histogram"].sum() > 0
    history = history_of(folder)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert "student_loss" not in history[0] and "student_loss" in history[1]  # warm-up epoch
    assert json.loads((folder / "status.json").read_text())["state"] == "done"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["attacks"]) == {"clean", "pgd20"} and metrics["n_eval"] == 40
    assert json.loads((folder / "env.json").read_text())["device_name"]  # the CPU model on a CPU run
    cost = json.loads((folder / "cost.json").read_text())
    assert cost["teacher_forward_images"] == 2 * 2 * 16  # 2 student epochs x 2 steps x batch 16
    again = start_run(tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "exp: 1 skipped (already finished)" in out
    dry = harness_process("run", "exp.yaml", "--dry-run", cwd=tmp_path)
    out, _ = dry.communicate(timeout=120)
    assert out.split()[:2] == ["done", "skip"]


def test_killed_run_resumes_with_the_same_history(tmp_path, teacher_checkpoint):
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, steps=6))
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    write_experiment(straight_dir, EXPERIMENT.format(teacher=teacher_checkpoint, steps=6))
    straight = start_run(straight_dir)

    process = start_run(tmp_path)
    checkpoint = kill_at_first_checkpoint(process, tmp_path / "results", "noise", poll=0.02)
    straight.communicate(timeout=300)
    folder = run_folder(tmp_path / "results", "noise")
    assert json.loads((folder / "status.json").read_text())["state"] in ("running", "interrupted")
    dry = harness_process("run", "exp.yaml", "--dry-run", cwd=tmp_path)
    assert dry.communicate(timeout=120)[0].split()[:2] == ["interrupted", "run"]
    epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch < 3

    run_experiment(tmp_path)
    history = history_of(folder)
    reference = history_of(run_folder(straight_dir / "results", "noise"))
    assert len(history) == 3
    # per-epoch reseeding: the resumed run's numbers equal the uninterrupted run's
    assert history == reference
    assert json.loads((folder / "status.json").read_text())["attempt"] == 2


def test_dfkd_schedule_skips_the_adversarial_step(tmp_path, teacher_checkpoint):
    """``schedule.adversarial: false`` (Table 8): the loss gets the clean batch, the attack never runs."""
    write_experiment(tmp_path, EXPERIMENT.format(teacher=teacher_checkpoint, steps=2))
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    dfkd = replace(spec, settings=replace(spec.settings, schedule=replace(spec.settings.schedule, adversarial=False)))
    assert dfkd.key != spec.key
    for cell, attacked in ((spec, True), (dfkd, False)):
        trainer = Trainer(cell, tmp_path, "cpu", progress=False)
        calls, seen = [], []
        trainer.method.adversarial = lambda x, logits, generator, labels: calls.append(1) or x + 0.01
        trainer.method.student_loss = lambda x, x_adv, logits, labels: (
            seen.append(torch.equal(x, x_adv)) or trainer.student(x).sum() * 0)
        trainer._student_steps(torch.Generator().manual_seed(0))
        assert len(calls) == (2 if attacked else 0) and seen == [not attacked] * 2


def test_cpu_name_reads_the_model_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_name(cpuinfo) == "Intel(R) Xeon(R) Processor"
    assert cpu_name(tmp_path / "missing")  # falls back to the platform, never empty
