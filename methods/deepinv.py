"""DeepInv — DeepInversion (Yin et al. 2020), converted to data-free robustness distillation
(docs/methods.md).

No generator: each epoch's synthesis round optimises one batch of images directly. The
pixels are parameters θ ~ N(0, 1) and the images are x = sigmoid(θ) ∈ (0, 1); labels y are
drawn uniformly over the classes. For ``inversion_steps`` steps (the reference scripts'
g_steps: 1000 in Fast-Datafree's CIFAR script, 2000 in the original; 0, the default, takes
the schedule's T_g) Adam (lr 0.1, betas (0.5, 0.99)) minimises, on a jittered copy x̃ of x (one random roll of up to 1/8 of the side in each
direction, and a horizontal flip with probability ½ where flips are natural),

    L = λ_bn·L_bn(x̃) + λ_oh·CE(T(x̃), y) + λ_adv·(−JS_τ(S(x̃), T(x̃))) + λ_tv·TV₁(x) + λ_l2·‖x‖₂

with L_bn the BatchNorm-statistics loss of the teacher (docs/methods.md), ‖x‖₂ the L2 norm of
the whole batch, and

    JS_τ(p, q) = ½ Σ_c P̃_c (log P̃_c − log M̃_c) + ½ Σ_c Q̃_c (log Q̃_c − log M̃_c)   (batch mean)

where P = softmax(p/τ), Q = softmax(q/τ), M = (P + Q)/2 and ~ clamps to [0.01, 0.99]
(M is formed before the clamping);

    TV₁(x) = mean|x[..., :, :-1] − x[..., :, 1:]| + mean|x[..., :-1, :] − x[..., 1:, :]|
           + mean|x[..., 1:, :-1] − x[..., :-1, 1:]| + mean|x[..., :-1, :-1] − x[..., 1:, 1:]|

(horizontal, vertical, anti-diagonal and diagonal neighbours; each mean over every pixel
pair and channel of the batch). The iterate with the lowest L — its images x, not the
jittered copy — joins the pool with its labels. The student step is the shared RSLAD step
(docs/methods.md; labels are not used by it).

Choices and reference-code issues:
- sigmoid rather than clamping keeps every pixel in (0, 1) with a gradient everywhere; at
  θ = 0 its slope ¼ is close to CIFAR's pixel std, so Adam's lr 0.1 on θ moves pixels about
  as far as the reference's lr 0.1 in normalised space did;
- both zju-vipa repositories keep ``best_inputs = inputs.data``, an alias of the parameters,
  so the pool receives the *last* iterate; here the best iterate is cloned (``BestIterate``);
- both the zju-vipa and NVIDIA code compute ``kl_div(log P, M)``, i.e. the reversed
  KL(M ‖ P) + KL(M ‖ Q); the paper's JS (KL(P ‖ M) + KL(Q ‖ M), above) is used here;
  Fast-Datafree also subtracts 0.001 × the student's BN loss, which is in no paper and
  left out;
- the student runs in eval mode without parameter gradients during synthesis.

Budget. One batch of ``schedule.batch_size`` images per epoch. Unlike a generator, which
carries what it learnt from round to round, every batch starts again from noise, so DeepInv
needs far more steps per round than the generator methods' T_g (docs/methods.md has the
measurement). Experiments set ``inversion_steps`` explicitly and the cost is in cost.json; no
per-dataset default is hidden in the plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.backbone.best_iterate import BestIterate
from harness.backbone.bn_hooks import BNStatistics
from harness.backbone.devices import randint, randn, to_float
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.errors import HarnessError
from harness.schema import param

JS_CLAMP = (0.01, 0.99)


@dataclass(frozen=True)
class Params:
    """DeepInversion hyper-parameters (the zju-vipa CIFAR values; λ_tv 1e-3 is CMI's script, Fast-Datafree's
    passes 0; docs/methods.md)."""

    lr: float = param(0.1, gt=0, doc="Adam learning rate of the pixel parameters")
    betas: tuple[float, float] = param((0.5, 0.99), ge=0, lt=1, doc="Adam betas")
    lambda_bn: float = param(10.0, ge=0, doc="weight of the BatchNorm-statistics loss")
    lambda_oh: float = param(1.0, ge=0, doc="weight of the cross-entropy on the drawn labels")
    lambda_adv: float = param(1.0, ge=0, doc="weight of −JS (student-teacher competition)")
    lambda_tv: float = param(1e-3, ge=0, doc="weight of the total variation TV₁")
    lambda_l2: float = param(0.0, ge=0, doc="weight of the batch L2 norm of the images")
    temperature: float = param(3.0, gt=0, doc="softmax temperature τ of the JS term")
    jitter: float = param(1 / 8, ge=0, lt=1, doc="largest random roll, as a fraction of the side")
    inversion_steps: int = param(0, ge=0, doc="Adam steps on each batch (g_steps); 0 = the schedule's T_g")

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"betas: expected two values, got {len(self.betas)}")


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float,
                  clamp: tuple[float, float] = JS_CLAMP) -> torch.Tensor:
    """JS_τ between the temperature softmaxes, probabilities clamped (module docstring; docs/methods.md)."""
    p = F.softmax(p_logits / temperature, dim=1)
    q = F.softmax(q_logits / temperature, dim=1)
    m = (p + q) / 2
    p, q, m = (t.clamp(*clamp) for t in (p, q, m))
    log_m = m.log()
    per_sample = 0.5 * (p * (p.log() - log_m)).sum(dim=1) + 0.5 * (q * (q.log() - log_m)).sum(dim=1)
    return per_sample.mean()


def total_variation_l1(x: torch.Tensor) -> torch.Tensor:
    """TV₁: mean absolute difference to the right, lower, anti-diagonal and diagonal neighbour, summed."""
    return ((x[..., :, :-1] - x[..., :, 1:]).abs().mean() + (x[..., :-1, :] - x[..., 1:, :]).abs().mean()
            + (x[..., 1:, :-1] - x[..., :-1, 1:]).abs().mean() + (x[..., :-1, :-1] - x[..., 1:, 1:]).abs().mean())


def deepinv_loss(params: Params, bn_loss: torch.Tensor, teacher_logits: torch.Tensor,
                 student_logits: torch.Tensor | None, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """L of docs/methods.md (module docstring); ``student_logits`` may be None when λ_adv = 0."""
    loss = params.lambda_bn * bn_loss + params.lambda_oh * F.cross_entropy(teacher_logits, labels)
    if params.lambda_adv > 0:
        loss = loss - params.lambda_adv * js_divergence(student_logits, teacher_logits, params.temperature)
    return loss + params.lambda_tv * total_variation_l1(images) + params.lambda_l2 * images.norm(2)


def jitter_and_flip(x: torch.Tensor, fraction: float, flip: bool) -> torch.Tensor:
    """One random roll of up to ``fraction`` of the side per axis, and a flip with probability ½ if ``flip``."""
    limits = [int(side * fraction) for side in x.shape[-2:]]
    shifts = [int(torch.randint(-limit, limit + 1, ())) for limit in limits]
    x = torch.roll(x, shifts=shifts, dims=(-2, -1))
    if flip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x


@register_method("deepinv")
class DeepInv(Method):
    """Model inversion by pixel optimisation: one batch per epoch, best iterate to the pool."""

    display = Display(color="#9467bd", order=20)

    Params = Params
    version = "1"

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        self.steps = params.inversion_steps or context.generator_steps
        if self.steps < 1:
            raise HarnessError("deepinv: set deepinv.inversion_steps or schedule.generator_steps >= 1")
        self.stats = BNStatistics(context.teacher)
        self.pool = ImagePool(context.pool_size, context.info, context.device)

    def synthesize(self, epoch: int) -> dict[str, float]:
        ctx, p, info = self.ctx, self.params, self.ctx.info
        shape = (ctx.batch_size, info.channels, info.image_size, info.image_size)
        latent = randn(shape, device=ctx.device).requires_grad_(True)
        labels = randint(0, info.num_classes, (ctx.batch_size,), device=ctx.device)
        optimizer = torch.optim.Adam([latent], lr=p.lr, betas=p.betas)
        best = BestIterate()
        with self.student_for_synthesis(epoch):
            for _ in range(self.steps):
                images = torch.sigmoid(latent)
                jittered = jitter_and_flip(images, p.jitter, info.hflip)
                with self.stats.record():
                    teacher_logits = ctx.teacher(jittered)
                student_logits = ctx.student(jittered) if p.lambda_adv > 0 else None
                loss = deepinv_loss(p, self.stats.loss(), teacher_logits, student_logits, labels, images)
                best.update(loss, images=images)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.pool.add(best["images"], labels)
        ctx.cost.images_synthesized += len(labels)
        return {"inversion_loss": to_float(best.loss)}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool.sample(batch_size, generator, device=self.ctx.device)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
