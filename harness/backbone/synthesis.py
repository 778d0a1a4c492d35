"""Pieces several synthesis methods share (CMI, Fast, FERD, DFHL): the generator's Adam betas, the
augmented "global" view, and the model-inversion loss L_inv with its decision-adversarial term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.backbone.distill import kl_divergence
from harness.data import DatasetInfo, augment_batch

ADAM_BETAS = (0.5, 0.999)  # Adam of every generator and latent code (DCGAN's)


def decision_adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """L_adv = −mean_i KL_i(T ‖ S)·1[argmax S_i = argmax T_i] (CMI, docs/methods.md).

    Only samples on which student and teacher still agree push the generator; the mean is
    over the whole batch (masked samples count as zero).
    """
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).to(student_logits.dtype)
    return -(kl_divergence(teacher_logits, student_logits, reduction="none") * agree).mean()


def inversion_loss(
    loss_bn: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_logits: torch.Tensor | None,
    *,
    lambda_bn: float,
    lambda_oh: float,
    lambda_adv: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_inv = λ_bn·L_bn + λ_oh·CE(T(x), y) + λ_adv·L_adv (CMI and Fast, docs/methods.md) and its terms.

    ``student_logits`` None leaves out the adversarial term (λ_adv off). The terms stay detached
    tensors on the device (read once per round).
    """
    loss_oh = F.cross_entropy(teacher_logits, labels)
    total = lambda_bn * loss_bn + lambda_oh * loss_oh
    terms = {"bn": loss_bn.detach(), "oh": loss_oh.detach()}
    if student_logits is not None:
        loss_adv = decision_adversarial_loss(teacher_logits, student_logits)
        total = total + lambda_adv * loss_adv
        terms["adv"] = loss_adv.detach()
    return total, terms


def global_view(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Random crop (zero padding size/8) + the dataset's natural flip, per image, global RNG."""
    return augment_batch(x, info, torch.default_generator)
