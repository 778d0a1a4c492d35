"""The robust distillation step shared by the DFKD baselines (RSLAD conversion, docs/methods.md).

x_adv = KL-PGD on the student: start at x + 0.001·N(0, 1), ``steps`` signed steps of α
maximising Σ KL(T(x) ‖ S(x_adv)), projected to the ε-ball and [0, 1];
L_S = w_adv · KL(T(x) ‖ S(x_adv)) + w_clean · KL(T(x) ‖ S(x)), teacher logits from clean x.

KL is summed over the classes and averaged over the batch (``schedule.kl_reduction: batchmean``).
RSLAD's code averages the element-wise terms over batch × classes (``mean``: KL / C). The harness
keeps the batch mean: it is the KL itself, on the scale of FERD's and Fair-ARD's losses, so one
student learning rate means the same step for every method and every number of classes; RSLAD's
form at lr 0.1 acts like the batch mean at lr 0.1 / C (0.01 on 10 classes, 0.001 on 100).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import attack_mode, project
from harness.backbone.devices import randn


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)); ``batchmean`` or per-sample (``none``)."""
    log_student = F.log_softmax(student_logits, dim=1)
    log_teacher = F.log_softmax(teacher_logits, dim=1)
    per_sample = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    return per_sample.mean() if reduction == "batchmean" else per_sample


def kl_pgd(
    student: nn.Module,
    x: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    init_std: float = 0.001,
    generator: torch.Generator | None = None,
    penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Adversarial examples maximising Σ_i KL(T(x)_i ‖ S(x_adv)_i) − penalty(S(x_adv))_i.

    The start noise is drawn on the CPU (from ``generator``) and moved to ``x``'s device.
    The model is attacked in eval mode with frozen parameters; ``penalty`` maps logits to a
    per-sample term (FERD's UTAEs subtract γ·KL(U ‖ S(x_adv)), Eq. 10).
    """
    noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = project(x + init_std * noise, x, epsilon)
    target = teacher_logits.detach()
    with attack_mode(student):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = student(x_adv)
            loss = kl_divergence(target, logits, reduction="none").sum()
            if penalty is not None:
                loss = loss - penalty(logits).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + step_size * grad.sign(), x, epsilon)
    return x_adv.detach()


def kl_reduction_scale(reduction: str, num_classes: int) -> float:
    """The factor on a class-summed KL for a KL ``reduction``: 1 for ``batchmean``, 1/C for ``mean``
    (the mean over batch × classes of RSLAD's, ARD's and Fair-ARD's code)."""
    if reduction not in ("batchmean", "mean"):
        raise ValueError(f"unknown KL reduction {reduction!r}")
    return 1.0 if reduction == "batchmean" else 1 / num_classes


def rslad_loss(
    teacher_logits: torch.Tensor,
    student_clean_logits: torch.Tensor,
    student_adv_logits: torch.Tensor,
    *,
    adv_weight: float = 5 / 6,
    clean_weight: float = 1 / 6,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """L_S = w_adv·KL(T(x) ‖ S(x_adv)) + w_clean·KL(T(x) ‖ S(x)) (RSLAD); ``batchmean`` KL, or
    ``mean`` over batch × classes as RSLAD's code (KL / C)."""
    target = teacher_logits.detach()
    scale = kl_reduction_scale(reduction, target.shape[1])
    return scale * (adv_weight * kl_divergence(target, student_adv_logits) + clean_weight * kl_divergence(
        target, student_clean_logits))
