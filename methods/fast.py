"""Fast: meta-learned generator for fast data-free distillation (Fang et al., AAAI 2022) → DFRD (docs/methods.md).

One persistent generator G is meta-learned so that a few steps from it synthesise a good
batch. Each round (one per epoch) draws a fresh z ~ N(0, I) and uniform labels y, clones
G to G', and runs ``g_steps`` Adam steps (betas (0.5, 0.999); lr_g on G', lr_z on z) on CMI's
inversion loss of one augmented view x_a (random crop, pad size/8, + the dataset's flip):

    L_inv = λ_bn·L_bn(x_a) + λ_oh·CE(T(x_a), y) + a_e·λ_adv·L_adv,   x_a = aug(G'(z)),

with L_adv the decision-adversarial term of CMI (methods/cmi.py) and a_e ∈ {0, 1} its switch in
epoch e (0-based) of a schedule with W = ``ctx.warmup_epochs`` generation-only warm-up epochs
(the trainer runs no student step in them, as the code's ``if epoch >= args.warmup: train(...)``):

    ``adv_start="code"`` (default):   a_e = 1[e ≥ W − 1],
    ``"after_warmup"`` (version 1):   a_e = 1[e ≥ W],
    ``"always"``:                     a_e = 1.

"code" is the released synthesizer's ``self.ep >= self.ep_start`` with ``ep_start = warmup``
and ``ep`` its 1-based round counter: L_adv is off for the first W − 1 rounds and on from the
last warm-up round, whose student is still untrained (W = 20 in the CIFAR scripts; W = 0 or 1:
on from the start). L_bn blends the batch statistics with those of earlier rounds, momentum
0.9: μ̂ = 0.9·μ_prev + 0.1·μ (``BNStatistics(momentum=0.9)``).
First-order MAML: after each inner backward, ∇_{G'} L_inv is added to G's gradient,

    g_meta = Σ_{t=1}^{g_steps} ∇_{G'} L_inv(G'_t),

and one meta step moves G with Adam(lr_g·g_steps, betas (0.5, 0.999)). The best inner
iterate (lowest L_inv) goes to the image pool with its labels; ``images_synthesized``
counts those images. The student is trained by the shared RSLAD step (``Method`` defaults).

Weights: the released CIFAR scripts (``scripts/fast_cifar.sh``, CIFAR-100 and, by changing only
``--dataset``, CIFAR-10) use λ_bn = 10 (BN momentum 0.9) and one (λ_oh, λ_adv) pair per teacher:

    teacher                      λ_oh   λ_adv
    WRN-40-2 (the default)       0.4    1.1
    ResNet-34                    0.5    1.33
    VGG-11                       0.5    1.0

The defaults are the WRN pair (the teachers of the CIFAR experiments are WRNs); set
``lambda_oh`` / ``lambda_adv`` for a ResNet or VGG teacher (e.g. Tiny-ImageNet's PreActResNet-34),
since ``default_params`` sees only the dataset. Version 1 paired the ResNet λ_oh 0.5 with the WRN
λ_adv 1.1.

Budget: one meta round of ``g_steps`` inner steps per epoch, as in the released CIFAR
scripts (``ep_steps = kd_steps = 400``: one ``synthesize()`` per epoch). The shared
schedule's T_g (``generator_steps``) is therefore not used by Fast: its synthesis cost per
epoch is g_steps generator steps, which is the method's claimed speed-up over CMI's T_g = 200.
The defaults g_steps 5, lr_g 3e-3, lr_z 0.01 are the scripts' 5-step setting (2 steps: 5e-3 /
0.015; 10 steps: 2e-3 / 0.01).

Differences from the released code (Fast-Datafree), on purpose: crops and flips are drawn
per image (its batch transforms draw one crop per batch); the student receives no gradient
and stays in eval mode during synthesis; the code's re-initialisation of the generator's first
layer in round 120 + warmup (``reset_l0``, on in the scripts, not in the paper) is left out.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.backbone.best_iterate import BestIterate
from harness.backbone.bn_hooks import BNStatistics
from harness.backbone.devices import randint, randn
from harness.backbone.generator import Generator
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.backbone.synthesis import ADAM_BETAS, global_view, inversion_loss
from harness.schema import param

BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Params:
    """Fast hyper-parameters; defaults are the released CIFAR values with a WRN teacher (5 inner steps)."""

    nz: int = param(256, ge=1, doc="latent dimension of the generator")
    g_steps: int = param(5, ge=1, doc="inner Adam steps per meta round (one round per epoch)")
    lr_g: float = param(3e-3, gt=0, doc="inner lr of G'; the meta step uses lr_g * g_steps")
    lr_z: float = param(0.01, gt=0, doc="inner lr of z")
    lambda_bn: float = param(10.0, ge=0, doc="weight of the BN-statistics loss (momentum 0.9)")
    lambda_oh: float = param(0.4, ge=0, doc="weight of CE(T(x), y) (code: 0.4 WRN, 0.5 ResNet-34 / VGG-11 teachers)")
    lambda_adv: float = param(
        1.1, ge=0, doc="weight of the decision-adversarial term (code: 1.1 WRN, 1.33 ResNet-34, 1.0 VGG-11 teachers)")
    adv_start: Literal["code", "after_warmup", "always"] = param(
        "code", doc="first epoch with L_adv: the last warm-up epoch (code) | the first student epoch (version 1) | "
                    "epoch 0")


def adversarial_on(epoch: int, warmup_epochs: int, start: str) -> bool:
    """a_e: whether L_adv is in the generator loss in ``epoch`` (0-based) with W = ``warmup_epochs``.

    "code": e ≥ W − 1 (the released ``ep >= warmup`` with a 1-based round counter ep = e + 1);
    "after_warmup": e ≥ W (the first epoch with student steps); "always": every epoch.
    """
    if start == "code":
        return epoch >= warmup_epochs - 1
    if start == "after_warmup":
        return epoch >= warmup_epochs
    if start == "always":
        return True
    raise ValueError(f"adv_start: must be 'code', 'after_warmup' or 'always', got {start!r}")


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
    """Inner loop of one Fast round (docs/methods.md); sets ``generator``'s .grad to the meta-gradient.

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
    display = Display(color="#ff7f0e", order=40)
    version = "2"  # 2: L_adv from the last warm-up epoch (``adv_start="code"``), λ_oh 0.4 (the WRN pair)
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
        adversarial = p.lambda_adv > 0 and adversarial_on(epoch, ctx.warmup_epochs, p.adv_start)

        def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            view = global_view(x, ctx.info)
            with self.stats.record():
                teacher_logits = ctx.teacher(view)
            student_logits = ctx.student(view) if adversarial else None
            return inversion_loss(self.stats.loss(), teacher_logits, labels, student_logits,
                                  lambda_bn=p.lambda_bn, lambda_oh=p.lambda_oh, lambda_adv=p.lambda_adv)

        with self.student_for_synthesis(epoch):
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
