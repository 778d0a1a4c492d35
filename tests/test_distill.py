"""The shared robust-distillation step (RSLAD conversion) against hand computations."""

import math

import pytest
import torch

from harness.backbone.distill import kl_divergence, kl_pgd, rslad_loss
from harness.models import create_model


def test_kl_divergence_by_hand():
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    student = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence(teacher, student).item() == pytest.approx(expected, rel=1e-6)
    both = torch.cat([teacher, teacher])
    per_sample = kl_divergence(both, torch.cat([student, teacher]), reduction="none")
    assert per_sample.tolist() == pytest.approx([expected, 0.0], abs=1e-7)
    assert kl_divergence(both, torch.cat([student, teacher])).item() == pytest.approx(expected / 2, rel=1e-6)


def test_rslad_loss_weights():
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    uniform = torch.tensor([[0.0, 0.0]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    # adversarial logits uniform (KL = kl), clean logits equal to the teacher's (KL = 0)
    assert rslad_loss(teacher, teacher, uniform).item() == pytest.approx(5 / 6 * kl, rel=1e-6)
    assert rslad_loss(teacher, uniform, teacher).item() == pytest.approx(1 / 6 * kl, rel=1e-6)
    assert rslad_loss(teacher, uniform, uniform, adv_weight=1, clean_weight=1).item() == pytest.approx(2 * kl, rel=1e-6)


def test_kl_pgd_stays_in_the_ball_and_raises_the_divergence():
    torch.manual_seed(0)
    teacher = create_model("cnn5", in_channels=3, num_classes=10, image_size=16).eval()
    student = create_model("resnet8", in_channels=3, num_classes=10, image_size=16)
    student.train()
    x = torch.rand(16, 3, 16, 16)
    with torch.no_grad():
        teacher_logits = teacher(x)
    epsilon = 8 / 255
    x_adv = kl_pgd(student, x, teacher_logits, epsilon=epsilon, step_size=2 / 255, steps=10,
                   generator=torch.Generator().manual_seed(1))
    assert (x_adv - x).abs().max().item() <= epsilon + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert student.training and all(p.requires_grad for p in student.parameters())
    student.eval()
    with torch.no_grad():
        assert kl_divergence(teacher_logits, student(x_adv)) > kl_divergence(teacher_logits, student(x))
    again = kl_pgd(student, x, teacher_logits, epsilon=epsilon, step_size=2 / 255, steps=10,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_adv, again)
