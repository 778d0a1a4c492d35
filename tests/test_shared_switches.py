"""The schedule-level switches shared by the methods (issue: methods as their authors ran them):
the RSLAD step's KL reduction, the per-epoch LR schedule of FERD's code, schedule defaults declared
by a method, the student's BatchNorm during synthesis, and the pool's class histogram."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.backbone.cost import Cost
from harness.backbone.distill import kl_divergence, rslad_loss
from harness.backbone.method import METHODS, Method, MethodContext, load_plugins
from harness.backbone.pool import ImagePool
from harness.trainer import Trainer
from harness.config import load_experiment
from harness.data import get_dataset
from harness.models import create_model

SYNTHETIC = get_dataset("synthetic")
GRID = """
base:
  dataset: synthetic
  student: resnet8
  teacher: {{arch: cnn5, checkpoint: {teacher}}}
  schedule: {{epochs: 4, warmup_epochs: 1, generator_steps: 1, student_steps: 3, batch_size: 8, history_every: 5,
              pool_size: 12 {schedule}}}
  threat: {{train_steps: 1}}
  eval: {{attacks: [clean], n_eval: 10}}
grid:
  method: [{method}]
"""


def cell(tmp_path, teacher, method="cmi", schedule=""):
    (tmp_path / "exp.yaml").write_text(GRID.format(teacher=teacher, method=method, schedule=schedule))
    (spec,) = load_experiment(tmp_path / "exp.yaml").cells
    return spec


def test_rslad_kl_mean_over_classes_is_the_batch_mean_over_c():
    torch.manual_seed(0)
    teacher, clean, adv = torch.randn(3, 4, 5).unbind(0)
    batchmean = rslad_loss(teacher, clean, adv)
    hand = 5 / 6 * kl_divergence(teacher, adv) + 1 / 6 * kl_divergence(teacher, clean)
    torch.testing.assert_close(batchmean, hand)
    # RSLAD's code: torch.mean of the element-wise terms p·(log p − log q) over batch × classes
    p = F.softmax(teacher, 1)
    elementwise = [(p * (p.log() - F.log_softmax(s, 1))).mean() for s in (adv, clean)]
    torch.testing.assert_close(rslad_loss(teacher, clean, adv, reduction="mean"),
                               5 / 6 * elementwise[0] + 1 / 6 * elementwise[1])
    with pytest.raises(ValueError, match="unknown KL reduction"):
        rslad_loss(teacher, clean, adv, reduction="sum")


def test_new_schedule_switches_stay_out_of_the_key_at_their_defaults(tmp_path, teacher_checkpoint):
    plain = cell(tmp_path, teacher_checkpoint)
    explicit = cell(tmp_path, teacher_checkpoint, schedule=", lr_schedule: student_steps, kl_reduction: batchmean, "
                                                           "synthesis_student_bn: running")
    assert plain.key == explicit.key
    keys = {cell(tmp_path, teacher_checkpoint, schedule=extra).key
            for extra in (", lr_schedule: epochs", ", kl_reduction: mean", ", synthesis_student_bn: batch")}
    assert len(keys | {plain.key}) == 4


def test_per_epoch_cosine_steps_through_the_warmup_epochs(tmp_path, teacher_checkpoint):
    """FERD's code: CosineAnnealingLR(T_max = epochs) stepped once per epoch, warm-up included, so the
    first student epoch (epoch 2 of 4 here) trains at lr·(1 + cos(π/4))/2."""
    spec = cell(tmp_path, teacher_checkpoint, schedule=", lr_schedule: epochs")
    trainer = Trainer(spec, tmp_path / "run", "cpu", progress=False)
    seen = []
    step = trainer.student_step
    trainer.student_step = lambda generator: seen.append(trainer.optimizer.param_groups[0]["lr"]) or step(generator)
    trainer.train()
    lr = spec.settings.schedule.lr
    expected = [lr * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in (1, 2, 3)]
    assert seen == pytest.approx([value for value in expected for _ in range(3)])
    # the default: cosine over the 3 × 3 student steps, one step per student step
    spec = cell(tmp_path, teacher_checkpoint)
    trainer = Trainer(spec, tmp_path / "run-default", "cpu", progress=False)
    seen.clear()
    step = trainer.student_step
    trainer.student_step = lambda generator: seen.append(trainer.optimizer.param_groups[0]["lr"]) or step(generator)
    trainer.train()
    assert seen == pytest.approx([lr * (1 + math.cos(math.pi * k / 9)) / 2 for k in range(9)])


def test_a_method_declares_schedule_defaults_and_the_file_wins(tmp_path, teacher_checkpoint, monkeypatch):
    load_plugins()
    monkeypatch.setattr(METHODS.get("noise").plugin, "schedule_defaults", {"weight_decay": 1e-4, "lr_min": 2e-4})
    declared = cell(tmp_path, teacher_checkpoint, method="noise").settings.schedule
    assert (declared.weight_decay, declared.lr_min) == (1e-4, 2e-4)
    overridden = cell(tmp_path, teacher_checkpoint, method="noise", schedule=", weight_decay: 5e-4").settings.schedule
    assert (overridden.weight_decay, overridden.lr_min) == (5e-4, 2e-4)
    other = cell(tmp_path, teacher_checkpoint, method="cmi").settings.schedule
    assert (other.weight_decay, other.lr_min) == (5e-4, 0.0)


def context(student, mode):
    teacher = create_model("cnn5", in_channels=3, num_classes=10, image_size=16).eval()
    return MethodContext(teacher=teacher, student=student, info=SYNTHETIC, epsilon=8 / 255, step_size=2 / 255,
                         attack_steps=1, batch_size=8, generator_steps=1, pool_size=16, device=torch.device("cpu"),
                         cost=Cost(), synthesis_student_bn=mode)


@pytest.mark.parametrize("mode", ["running", "batch_first_epoch", "batch"])
def test_student_batchnorm_during_synthesis(mode):
    """Batch statistics where asked (epoch 0 for batch_first_epoch), running statistics untouched,
    parameters frozen, and the student's own modes restored afterwards."""
    torch.manual_seed(0)
    student = create_model("resnet8", in_channels=3, num_classes=10, image_size=16).train()
    method = Method(None, context(student, mode))
    x = torch.rand(8, 3, 16, 16)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        running = student.eval()(x)
        student.train()
        for epoch in (0, 1):
            with method.student_for_synthesis(epoch) as model:
                assert not any(p.requires_grad for p in model.parameters())
                logits = model(x)
            batch = mode == "batch" or (mode == "batch_first_epoch" and epoch == 0)
            assert torch.allclose(logits, running) != batch
            assert student.training
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pool_class_histogram_in_the_history_and_not_in_the_cost(tmp_path, teacher_checkpoint):
    spec = cell(tmp_path, teacher_checkpoint)
    trainer = Trainer(spec, tmp_path / "run", "cpu", progress=False)
    forwards = []
    original = trainer._pool_classes
    trainer._pool_classes = lambda pool, added: forwards.append(trainer.cost.teacher_forward_images) or (
        original(pool, added) | {"after": trainer.cost.teacher_forward_images})
    trainer.train()
    history = trainer.history
    assert [sum(line["pool_new_classes"]) for line in history] == [8, 8, 8, 8]
    assert [sum(line["pool_classes"]) for line in history] == [8, 12, 12, 12]  # capacity 12
    assert [line["after"] for line in history] == forwards  # the histogram's teacher passes are not counted
    with torch.no_grad():  # the newest images as the teacher labels them
        pool = trainer.method.pool
        classes = trainer.teacher(pool.newest(8)).argmax(1)
    assert history[-1]["pool_new_classes"] == torch.bincount(classes, minlength=10).tolist()
    assert torch.equal(pool.teacher_classes[(pool.count - 8 + torch.arange(8)) % 12], classes)


def test_pool_keeps_teacher_classes_through_a_checkpoint():
    pool = ImagePool(5, SYNTHETIC)
    pool.add(torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 2]))
    pool.note_teacher_classes(torch.tensor([4, 5, 6]))
    pool.add(torch.rand(3, 3, 16, 16))
    pool.note_teacher_classes(torch.tensor([7, 8]))  # the two newest of the second batch
    # the second batch went to slots 3, 4, 0; its two newest (slots 4, 0) noted, slot 3 not
    assert pool.teacher_classes.tolist() == [8, 5, 6, -1, 7]
    restored = ImagePool(5, SYNTHETIC)
    restored.load_state_dict(pool.state_dict())
    assert restored.teacher_classes.tolist() == pool.teacher_classes.tolist()
    torch.testing.assert_close(restored.newest(2), pool.newest(2))
    partial = ImagePool(5, SYNTHETIC)
    partial.add(torch.rand(2, 3, 16, 16))
    state = partial.state_dict()
    del state["teacher_classes"]  # a checkpoint written before the histogram
    restored = ImagePool(5, SYNTHETIC)
    restored.load_state_dict(state)
    assert restored.teacher_classes.tolist() == [-1, -1]


def test_unmetered_restores_the_teacher_counts():
    cost = Cost()
    teacher = nn.Linear(2, 2)
    cost.watch_teacher(teacher)
    teacher(torch.zeros(3, 2))
    with cost.unmetered():
        teacher(torch.zeros(5, 2))
    assert cost.teacher_forward_images == 3


def test_batch_statistics_give_a_fresh_mobilenet_student_a_signal():
    """At initialisation MobileNetV2-tiny's eval logits are nearly constant (std ~1e-6): a generator
    loss through them has no gradient to follow; with the batch's statistics they vary."""
    torch.manual_seed(0)
    student = create_model("mobilenetv2-tiny", in_channels=1, num_classes=10, image_size=28)
    x = torch.rand(32, 1, 28, 28, requires_grad=True)
    spread = {}
    for mode in ("running", "batch"):
        method = Method(None, context(student, mode))
        with method.student_for_synthesis(0) as model:
            logits = model(x)
            (grad,) = torch.autograd.grad(F.log_softmax(logits, 1)[:, 0].sum(), x)
        spread[mode] = (logits.std().item(), grad.abs().max().item())
    assert spread["running"][0] < 1e-4 and spread["running"][1] < 1e-4
    assert spread["batch"][0] > 1e-2 and spread["batch"][1] > 100 * spread["running"][1]
