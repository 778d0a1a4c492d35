"""L∞ evaluation attacks (docs/methods.md): FGSM, PGD-k, CW∞ and the official AutoAttack.

Every attack takes images in [0, 1] and returns adversarial images inside the ε-ball
around them and inside [0, 1]. Evaluation attacks run the model in eval mode with its
parameter gradients off (:func:`attack_mode`); the caller's mode and flags are restored.
Evaluation attacks are registered in :data:`ATTACKS` by the names used in configs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.backbone.devices import rand
from harness.errors import HarnessError
from harness.registry import Registry


def attack_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Eval mode and ``requires_grad_(False)`` on the parameters, restored on exit."""
    return frozen(model, train=False)


@contextmanager
def frozen(model: nn.Module, *, train: bool) -> Iterator[nn.Module]:
    """Train or eval mode and ``requires_grad_(False)`` on the parameters; the caller's modes and
    flags restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.train(train)
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for module, training in modes:
            module.training = training


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Π onto the ε-ball around ``x`` intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-sample CW∞ objective −clamp(z_y − max_{j≠y} z_j + κ, min=0) (to be maximised)."""
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return -(true_logit - others.max(dim=1).values + kappa).clamp(min=0)


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (to be maximised)."""
    return F.cross_entropy(logits, y, reduction="none")


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float) -> torch.Tensor:
    """One signed-gradient step of size ε on the cross-entropy, from ``x``."""
    x_adv = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cross_entropy_loss(model(x_adv), y).sum(), x_adv)
    return project(x + epsilon * grad.sign(), x, epsilon).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    objective: Objective = cross_entropy_loss,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD-k: uniform random start in the ε-ball, ``steps`` signed steps maximising ``objective``.

    The start is drawn on the CPU (from ``generator``, a CPU generator) and moved to ``x``'s device,
    so a seed gives the same start on every device.
    """
    x_adv = x.clone()
    if random_start:
        noise = rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = project(x + epsilon * (2 * noise - 1), x, epsilon)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(x_adv), y).sum(), x_adv)
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, epsilon)
    return x_adv.detach()


# --------------------------------------------------------------------------- AutoAttack
def _autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, version: str,
                seed: int, batch_size: int) -> torch.Tensor:
    """Predicted labels under the official AutoAttack (``pyautoattack``, or a user's ``autoattack``).

    ``standard``: APGD-CE, APGD-T, FAB-T, Square. ``fast``: APGD-CE (1 restart) + APGD-T only,
    a cheaper CPU variant that tables must label as such.
    """
    num_classes = model(x[:1]).shape[1]
    try:
        from pyautoattack import AutoAttack

        official = False
    except ImportError:
        try:
            from autoattack import AutoAttack
        except ImportError:
            raise HarnessError("AutoAttack is not installed: pip install pyautoattack") from None
        official = True
    if version == "standard":
        adversary = AutoAttack(model, eps=epsilon, norm="Linf", version="standard", seed=seed, device=x.device)
    else:
        attacks = ["apgd-ce", "apgd-t"]
        extra = {"attacks_to_run": attacks} if official else {"attacks": attacks}
        adversary = AutoAttack(model, eps=epsilon, norm="Linf", version="custom", seed=seed, device=x.device, **extra)
    adversary.apgd.n_restarts = 1
    adversary.apgd_targeted.n_target_classes = min(9, num_classes - 1)
    adversary.fab.n_target_classes = min(9, num_classes - 1)
    if official:
        _, y_adv = adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)
    else:
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return y_adv


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class EvalAttack:
    """An evaluation attack: ``run(model, x, y, ctx)`` returns the predicted labels.

    ``whole_set``: it runs once over all samples (AutoAttack batches internally).
    """

    name: str
    label: str
    run: Callable[..., torch.Tensor]
    whole_set: bool = False


@dataclass(frozen=True)
class AttackContext:
    epsilon: float
    step_size: float
    seed: int
    aa_version: str = "standard"
    batch_size: int = 256


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)  # on the CPU, whatever the device of the batch


ATTACKS: Registry[EvalAttack] = Registry("attack")
for _attack in (
    EvalAttack("clean", "Clean", lambda m, x, y, c: _predict(m, x)),
    EvalAttack("fgsm", "FGSM", lambda m, x, y, c: _predict(m, fgsm(m, x, y, epsilon=c.epsilon))),
    EvalAttack("pgd20", "PGD-20", lambda m, x, y, c: _predict(m, pgd(
        m, x, y, epsilon=c.epsilon, step_size=c.step_size, steps=20, generator=_seeded(c.seed)))),
    EvalAttack("cw", "CW∞", lambda m, x, y, c: _predict(m, pgd(
        m, x, y, epsilon=c.epsilon, step_size=c.step_size, steps=20, objective=cw_margin_loss,
        generator=_seeded(c.seed)))),
    EvalAttack("aa", "AA", lambda m, x, y, c: _autoattack(
        m, x, y, epsilon=c.epsilon, version=c.aa_version, seed=c.seed, batch_size=c.batch_size), whole_set=True),
):
    ATTACKS.register(_attack.name, _attack)
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS.names())  # the names configs, reports and the CLI accept
ATTACK_TITLES: dict[str, str] = {name: ATTACKS.get(name).label for name in ATTACK_NAMES}
