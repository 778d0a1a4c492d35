"""Fast: meta-learned generator for fast data-free distillation (Fang et al., AAAI 2022) → DFRD (METHODS.md §4).

One persistent generator G is meta-learned so that a few steps from it synthesise a good
batch. Each round (one per epoch) draws a fresh z ~ N(0, I) and uniform labels y, clones
G to G', and runs ``g_steps`` Adam steps (betas (0.5, 0.999); lr_g on G', lr_z on z) on CMI's
inversion loss of one augmented view x_a (random crop, pad size/8, + the dataset's flip):

    L_inv = λ_bn·L_bn(x_a) + λ_oh·CE(T(x_a), y) + λ_adv·L_adv,   x_a = aug(G'(z)),

with L_adv the decision-adversarial term of CMI (methods/cmi.py), switched on only from the
first epoch after the schedule's warm-up (``ctx.warmup_epochs``; the code's ``ep_start = warmup``)
— during warm-up the student is untrained. L_bn blends the batch statistics with those of
earlier rounds, momentum 0.9: μ̂ = 0.9·μ_prev + 0.1·μ (``BNStatistics(momentum=0.9)``).
First-order MAML: after each inner backward, ∇_{G'} L_inv is added to G's gradient,

    g_meta = Σ_{t=1}^{g_steps} ∇_{G'} L_inv(G'_t),

and one meta step moves G with Adam(lr_g·g_steps, betas (0.5, 0.999)). The best inner
iterate (lowest L_inv) goes to the image pool with its labels; ``images_synthesized``
counts those images. The student is trained by the shared RSLAD step (``Method`` defaults).

Budget: one meta round of ``g_steps`` inner steps per epoch, as in the released CIFAR
scripts (``ep_steps = kd_steps = 400``: one ``synthesize()`` per epoch). The shared
schedule's T_g (``generator_steps``) is therefore not used by Fast: its synthesis cost per
epoch is g_steps generator steps, which is the method's claimed speed-up over CMI's T_g = 200.

Differences from the released code (Fast-Datafree), on purpose: crops and flips are drawn
per image (its batch transforms draw one crop per batch); the student receives no gradient
and stays in eval mode during synthesis; the code's reset of the generator's first layer at
epoch 120 (``reset_l0``, not in the paper) is left out.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.attacks import attack_mode
from harness.backbone.best_iterate import BestIterate
from harness.backbone.bn_hooks import BNStatistics
from harness.backbone.devices import randint, randn
from harness.backbone.generator import Generator
from harness.backbone.method import Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.schema import param
from methods.cmi import ADAM_BETAS, global_view, inversion_loss

BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Params:
    """Fast hyper-parameters; defaults are the paper's CIFAR values with a WRN teacher."""

    nz: int = param(256, ge=1, doc="latent dimension of the generator")
    g_steps: int = param(5, ge=1, doc="inner Adam steps per meta round (one round per epoch)")
    lr_g: float = param(3e-3, gt=0, doc="inner lr of G'; the meta step uses lr_g * g_steps")
    lr_z: float = param(0.01, gt=0, doc="inner lr of z")
    lambda_bn: float = param(10.0, ge=0, doc="weight of the BN-statistics loss (momentum 0.9)")
    lambda_oh: float = param(0.5, ge=0, doc="weight of CE(T(x), y)")
    lambda_adv: float = param(1.1, ge=0, doc="weight of the decision-adversarial term (1.33 for ResNet teachers)")


def accumulate_grad(meta: nn.Module, fast: nn.Module) -> None:
    """First-order MAML: add each parameter gradient of the clone ``fast`` into ``meta``'s .grad."""
    for meta_param, fast_param in zip(meta.parameters(), fast.parameters(), strict=True):
        if fast_param.grad is not None:
            meta_param.grad = fast_param.grad.clone() if meta_param.grad is None else meta_param.grad + fast_param.grad


def meta_round(
    generator: nn.Module,
    z: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    *,
    steps: int,
    lr_g: float,
    lr_z: float,
) -> tuple[torch.Tensor, float, dict[str, float]]:
    """Inner loop of one Fast round (METHODS.md §4); sets ``generator``'s .grad to the meta-gradient.

    Clones G to G', runs ``steps`` Adam steps on (G', z) minimising ``loss_fn(G'(z))``, and
    leaves Σ_t ∇_{G'} L(G'_t) in G's .grad (previous values dropped) for the caller's meta
    step. Returns the best iterate's images (detached), its loss and its terms (read from the
    device once, after the loop).
    """
    fast = copy.deepcopy(generator)
    optimizer = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": lr_z}], lr=lr_g,
                                 betas=ADAM_BETAS)
    generator.zero_grad(set_to_none=True)
    best = BestIterate()
    for _ in range(steps):
        x = fast(z)
        loss, terms = loss_fn(x)
        best.update(loss, terms, images=x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        accumulate_grad(generator, fast)
        optimizer.step()
    values = best.numbers()
    best_loss = values.pop("loss")
    return best["images"], best_loss, values


@register_method("fast")
class Fast(Method):
    version = "1"
    Params = Params

    @classmethod
    def default_params(cls, dataset: str) -> Params:
        """CIFAR values everywhere (5 inner steps per epoch is already a small CPU budget),
        except 2 inner steps on the test-only ``synthetic`` dataset."""
        return Params(g_steps=2) if dataset == "synthetic" else Params()

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        info = context.info
        self.generator = Generator(params.nz, info.channels, info.image_size).to(context.device)
        self.meta_optimizer = torch.optim.Adam(self.generator.parameters(), lr=params.lr_g * params.g_steps,
                                               betas=ADAM_BETAS)
        self.stats = BNStatistics(context.teacher, momentum=BN_MOMENTUM)
        self.pool = ImagePool(context.pool_size, info, context.device)

    def synthesize(self, epoch: int) -> dict[str, float]:
        """One meta round: g_steps inner steps from a clone of G, then one meta step on G."""
        ctx, p = self.ctx, self.params
        n = ctx.batch_size
        z = randn((n, p.nz), device=ctx.device).requires_grad_(True)
        labels = randint(0, ctx.info.num_classes, (n,), device=ctx.device)
        adversarial = epoch >= ctx.warmup_epochs and p.lambda_adv > 0

        def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            view = global_view(x, ctx.info)
            with self.stats.record():
                teacher_logits = ctx.teacher(view)
            student_logits = ctx.student(view) if adversarial else None
            return inversion_loss(self.stats.loss(), teacher_logits, labels, student_logits,
                                  lambda_bn=p.lambda_bn, lambda_oh=p.lambda_oh, lambda_adv=p.lambda_adv)

        with attack_mode(ctx.student):
            images, best_loss, terms = meta_round(self.generator, z, loss_fn, steps=p.g_steps, lr_g=p.lr_g,
                                                  lr_z=p.lr_z)
        self.meta_optimizer.step()
        self.stats.end_round()
        self.pool.add(images, labels)
        ctx.cost.images_synthesized += n
        return {"gen_loss": best_loss} | {f"gen_{name}": value for name, value in terms.items()}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.sample(batch_size, generator, self.ctx.device)

    def state_dict(self) -> dict[str, Any]:
        momentum = [[mean, var] for mean, var in self.stats.previous or []]
        return {"pool": self.pool.state_dict(), "generator": self.generator.state_dict(),
                "meta_optimizer": self.meta_optimizer.state_dict(), "bn_momentum": momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.generator.load_state_dict(state["generator"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        device = self.ctx.device
        self.stats.previous = [(mean.to(device), var.to(device)) for mean, var in state["bn_momentum"]] or None
