"""ZSKT — zero-shot knowledge transfer by adversarial belief matching (Micaelli & Storkey 2019),
converted to data-free robustness distillation (METHODS.md §1).

A generator G plays against the student: it produces images on which teacher and student
disagree most,

    L_G = −KL(T(G(z)) ‖ S(G(z)))            (minimised by G, i.e. KL maximised),

and the student is then distilled on those images. In the DFRD conversion the student step
is the shared robust distillation step (RSLAD, METHODS.md §0; the trainer's default
``adversarial`` / ``student_loss``) on batches drawn from the image pool.

Rounds. One round = one z batch (the schedule's batch size), ``n_g`` Adam steps of G on
L_G for that z, then G(z) of the updated G goes to the pool. An epoch has ⌈T_g / n_g⌉
rounds (T_g = ``schedule.generator_steps``), so G takes at least T_g steps per epoch; the
original's n_s = 10 student steps per round become the schedule's T_s student steps per
epoch on the pool (paper schedule: T_s / T_g = 400 / 200 = 2 student steps per round).

Attention transfer. The original student loss adds β·Σ_blocks AT(S, T) (β = 250) with
AT(a, b) = mean((â − b̂)²), â the L2-normalised, flattened channel-mean of squared
activations (Zagoruyko & Komodakis). The RSLAD conversion *replaces* the student loss, so
every converted baseline differs only in its synthesis; AT is therefore a switch
(``attention``), off by default. When on, the student's block maps are resized
(bilinear) to the teacher's when their sizes differ, and the models must expose the same
number of ``block_layers`` (an error otherwise, rather than a silent no-op).

Choices and reference-code issues:
- the generator loss uses the *real student* (``ctx.student``): Fast-Datafree's ZSKT passes
  the teacher as both models, making L_G ≡ 0 and G untrained — avoided (see the tests);
- the student runs in eval mode without parameter gradients during the G steps (as in the
  zju-vipa synthesizers), so synthesis never touches its BatchNorm statistics; the original
  kept it in train mode;
- KL is the batch mean; the original's ``F.kl_div`` default averaged over batch × classes
  (KL / C), which only rescales the gradient seen by Adam;
- G's gradient norm is clipped to 5 as in the original code; its cosine learning-rate decay
  over the whole run is not reproduced (a method does not know the run length), so the
  G learning rate is constant;
- nz defaults to 256 (the shared generator's default, METHODS.md §0); the original used 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import attack_mode
from harness.backbone.distill import kl_divergence, rslad_loss
from harness.backbone.devices import randn, to_host
from harness.backbone.generator import Generator
from harness.backbone.method import Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.errors import HarnessError
from harness.schema import param


@dataclass(frozen=True)
class Params:
    """ZSKT hyper-parameters (original CIFAR values; per-dataset defaults in ``default_params``)."""

    nz: int = param(256, ge=1, doc="dimension of the generator's latent z")
    width: int = param(64, ge=1, doc="generator width (the original's 64: 128 → 64 channels)")
    lr: float = param(1e-3, gt=0, doc="Adam learning rate of the generator")
    n_g: int = param(1, ge=1, doc="generator steps per round (per z batch)")
    grad_clip: float = param(5.0, ge=0, doc="max gradient norm of the generator (0 = no clipping)")
    attention: bool = param(False, doc="add the original's attention-transfer term to the student loss")
    beta: float = param(250.0, ge=0, doc="weight β of the attention-transfer term")


def generator_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """L_G = −KL(T(x) ‖ S(x)), batch mean (METHODS.md §1); G minimises it."""
    return -kl_divergence(teacher_logits, student_logits)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Channel mean of the squared activations, N×1×H×W (before normalisation)."""
    return features.pow(2).mean(dim=1, keepdim=True)


def attention_loss(student_blocks: list[torch.Tensor], teacher_blocks: list[torch.Tensor]) -> torch.Tensor:
    """Σ_blocks mean((â_S − â_T)²), â the L2-normalised flattened attention map (METHODS.md §1).

    A student map of another spatial size is resized bilinearly to the teacher's.
    """
    total = student_blocks[0].new_zeros(())
    for student, teacher in zip(student_blocks, teacher_blocks, strict=True):
        a_s, a_t = attention_map(student), attention_map(teacher)
        if a_s.shape[-2:] != a_t.shape[-2:]:
            a_s = F.interpolate(a_s, size=a_t.shape[-2:], mode="bilinear", align_corners=False)
        a_s, a_t = F.normalize(a_s.flatten(1), dim=1), F.normalize(a_t.flatten(1), dim=1)
        total = total + (a_s - a_t).pow(2).mean()
    return total


def _block_count(model: nn.Module) -> int:
    return len(getattr(model, "block_layers", ())) if hasattr(model, "forward_blocks") else 0


@register_method("zskt")
class ZSKT(Method):
    """Adversarial belief matching: G maximises KL(T ‖ S) on its images; the student distils on them."""

    Params = Params
    version = "1"

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        if context.generator_steps < 1:
            raise HarnessError("zskt: schedule.generator_steps must be >= 1 (the generator's steps per epoch)")
        if params.attention:
            teacher, student = _block_count(context.teacher), _block_count(context.student)
            if not teacher or teacher != student:
                raise HarnessError(f"zskt.attention: teacher and student need the same number of attention "
                                   f"blocks (teacher {teacher}, student {student}); set attention: false")
        info = context.info
        self.generator = Generator(params.nz, info.channels, info.image_size, params.width).to(context.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=params.lr)
        self.pool = ImagePool(context.pool_size, info, context.device)

    @classmethod
    def default_params(cls, dataset: str) -> Params:
        """CIFAR-size generator by default; smaller ones for the CPU datasets.

        fashion-mnist (1×28×28, 2 CPU cores): nz 100 (ZSKT's own latent size) and width 32,
        half the generator's channels — a grey 28×28 image needs less capacity and the
        generator's cost per round drops about 4×. synthetic (3×16×16, tests only): nz 32, width 16.
        """
        if dataset == "fashion-mnist":
            return Params(nz=100, width=32)
        if dataset == "synthetic":
            return Params(nz=32, width=16)
        return Params()

    def synthesize(self, epoch: int) -> dict[str, float]:
        ctx, n_g = self.ctx, self.params.n_g
        rounds = math.ceil(ctx.generator_steps / n_g)
        divergences = []  # −L_G of every step, kept on the device and read once
        self.generator.train()
        with attack_mode(ctx.student):
            for _ in range(rounds):
                z = randn((ctx.batch_size, self.params.nz), device=ctx.device)
                for _ in range(n_g):
                    x = self.generator(z)
                    loss = generator_loss(ctx.teacher(x), ctx.student(x))
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.params.grad_clip > 0:
                        nn.utils.clip_grad_norm_(self.generator.parameters(), self.params.grad_clip)
                    self.optimizer.step()
                    divergences.append(-loss.detach().float())
                with torch.no_grad():
                    self.pool.add(self.generator(z))
                ctx.cost.images_synthesized += len(z)
        steps = to_host(torch.stack(divergences)).double().tolist()
        return {"generator_kl": sum(steps) / len(steps)}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        images, _ = self.pool.sample(batch_size, generator, device=self.ctx.device)
        return images, None

    def student_loss(self, x: torch.Tensor, x_adv: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        """RSLAD (METHODS.md §0), plus β·AT on the clean images when ``attention`` is on."""
        if not self.params.attention:
            return super().student_loss(x, x_adv, teacher_logits, labels)
        student, teacher = self.ctx.student, self.ctx.teacher
        clean_logits, student_blocks = student.forward_blocks(x)
        with torch.no_grad():
            _, teacher_blocks = teacher.forward_blocks(x)
        self.ctx.cost.teacher_forward_images += len(x)  # forward_blocks bypasses the teacher's hooks
        return rslad_loss(teacher_logits, clean_logits, student(x_adv)) + self.params.beta * attention_loss(
            student_blocks, teacher_blocks)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.pool.load_state_dict(state["pool"])
