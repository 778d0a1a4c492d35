"""ZSKT — zero-shot knowledge transfer by adversarial belief matching (Micaelli & Storkey 2019),
converted to data-free robustness distillation (docs/methods.md).

A generator G plays against the student: it produces images on which teacher and student
disagree most,

    L_G = −KL(T(G(z)) ‖ S(G(z)))            (minimised by G, i.e. KL maximised),

and the student is then distilled on those images. In the DFRD conversion the student step
is the shared robust distillation step (RSLAD, docs/methods.md; the trainer's default
``adversarial`` / ``student_loss``).

Modes (``mode``).

- ``reference`` (default; the released code's loop): one iteration draws z ~ N(0, I) of the
  batch's size, takes ``n_g`` Adam steps of G on L_G for that z, then ``n_s`` student steps
  on x = G(z) of the updated G — the same z and the same images for all n_s steps — and the
  next iteration draws a fresh z. No pool. The trainer calls ``sample`` once per student
  step, so ``sample`` runs the iteration: on every n_s-th call (the first of a group) it
  draws z, takes the n_g generator steps and computes x = G(z) once (no gradient, G in train
  mode), and it returns that x, unaugmented, on this call and the next n_s − 1 calls.
  ``synthesize`` has nothing to do (the released code has no generation stage outside this
  loop). G thus takes n_g steps per n_s student steps (n_g·T_s / n_s per epoch when n_s
  divides T_s); the schedule's T_g (``generator_steps``) is not used.
- ``pool`` (version 1 of this plugin): an epoch has ⌈T_g / n_g⌉ rounds; a round draws one z
  batch, takes n_g Adam steps of G on L_G for it, then adds G(z) of the updated G to the
  shared FIFO image pool; the epoch's T_s student steps draw batches (random crop + flips)
  from the pool, which holds images of older rounds too. G takes at least T_g steps per epoch.

Numbers per epoch: ``generator_kl``, the mean of KL(T ‖ S) = −L_G over the epoch's generator
steps (from ``synthesize`` in pool mode, from ``end_of_epoch`` in reference mode, which also
gives ``generator_steps``, their count), ``generator_lr``, G's learning rate at the epoch's
last generator step, and ``batch_class_counts``: per class, how many of
the clean images of the epoch's student steps the teacher labels (argmax) with that class —
one count per image per step (a group's batch counts n_s times), so they sum to T_s × batch.
They are counted on the logits the trainer already computes for the step (no extra teacher
queries), kept on the device and read once at the end of the epoch.

Attention transfer. The original student loss adds β·Σ_blocks AT(S, T) (β = 250) with
AT(a, b) = mean((â − b̂)²), â the L2-normalised, flattened channel-mean of squared
activations (Zagoruyko & Komodakis). The RSLAD conversion *replaces* the student loss, so
every converted baseline differs only in its synthesis; AT is therefore a switch
(``attention``), off by default. When on, the student's block maps are resized
(bilinear) to the teacher's when their sizes differ, and the models must expose the same
number of ``block_layers`` (an error otherwise, rather than a silent no-op).

Generator learning rate (``generator_lr``). The released code anneals G's Adam learning rate with
the same cosine as the student's, over the whole run, both stepped once per group: G slows down
as the student does and is still at the end. ``student`` (default) does that here: before each
group's (or round's) steps G's learning rate is lr × lr_S(t)/lr_S(0), the student's current
fraction of its initial learning rate (``MethodContext.student_lr_scale``; the schedule's cosine,
stepped per epoch or per step as the schedule says). ``constant`` keeps it at lr throughout
(version 2 of this plugin). Why it matters: with a constant lr, G keeps moving at full speed while
the student's learning rate reaches zero. In the 50-epoch Fashion-MNIST benchmark (version 2,
seed 1; reports/fmnist_bench/README.md) G's batches turned all Bag in the last three epochs, when
the student's learning rate was below 1 % of its initial one, and the final student fell from
48 % PGD-20 on the probe at epoch 45 to 11 %. The likely path is the student's BatchNorm running
statistics, which every G and student step updates in train mode whatever the learning rate.

Output BatchNorm (``output_bn``). The released generator is the shared generator's layout
(Linear → BN → [Upsample → Conv3×3 → BN → LeakyReLU(0.2)] ×2 → Conv3×3) ending in an affine
``BatchNorm2d(3)`` and no squashing: its images live in the teacher's mean/std-normalised
input space. The harness's teachers take [0, 1] images and its generator ends in a Sigmoid;
``output_bn: true`` puts the affine BatchNorm between the last convolution and the Sigmoid,
so each channel of a batch has pre-Sigmoid mean β and standard deviation γ (0 and 1 at
initialisation) before it is squashed into [0, 1]. Off by default (the shared generator).

Differences from the released code (reference mode unless said otherwise):
- the student step is the DFRD conversion (RSLAD on KL-PGD examples, the schedule's SGD with
  its cosine decay, no gradient clipping), not KL(T ‖ S) + β·AT on the clean images with
  Adam (lr 2e-3), cosine decay over the run and the gradient norm clipped to 5;
- the generator loss uses the *real student* (``ctx.student``): Fast-Datafree's ZSKT passes
  the teacher as both models, making L_G ≡ 0 and G untrained — avoided (see the tests);
- during the G steps the student runs in train mode, as in the original (its BatchNorm uses
  the batch's statistics and updates its running statistics with G's images), but with its
  parameter gradients off (the original computes them and discards them at the student's
  ``zero_grad``). Pool mode instead runs it in eval mode without parameter gradients (as the
  zju-vipa synthesizers), so synthesis never touches its BatchNorm statistics;
- x = G(z) is computed once per group and detached; the original recomputes G(z) at each
  student step (the same values: G does not change within a group and its BatchNorm uses
  batch statistics) without detaching (the student loss's gradient reaching G is zeroed
  before G's next step). G's BatchNorm running statistics are hence updated once per group
  instead of at each call; only an eval-mode G would see that, and neither loop uses one;
- the trainer computes the teacher's logits on x at every student step; the original once
  per group (the same values; n_s − 1 more teacher forwards per group in the cost meter);
- z is drawn from the trainer's per-epoch CPU generator (the ``sample`` argument); the
  original draws its first z when it builds the generator and each later one from torch's
  global generator. A group begun near the end of an epoch ends in the next epoch (the
  original has no epochs); its images and the steps left are in the checkpoint;
- warm-up epochs (``schedule.warmup_epochs``) take no generator steps in reference mode (the
  original has no generation-only phase; G only moves between student steps);
- KL is the batch mean; the original's ``F.kl_div`` default averaged over batch × classes
  (KL / C), which only rescales the gradient seen by Adam;
- the generator ends in a Sigmoid (see Output BatchNorm) and its convolutions before a
  BatchNorm have no bias (a per-channel constant that BatchNorm removes);
- the batch size is the schedule's (the original's CIFAR-10 scripts: 128), nz defaults to 256
  (the shared generator's default, docs/methods.md; the original: 100), per-dataset defaults
  in ``default_params``;
- the samples figure (``gallery``) shows batches of fresh z through G in train mode (batch
  statistics, as the student's images; G's running statistics restored afterwards); the
  original's image log uses G in eval mode.

As in the released code: G's Adam at lr 1e-3 with its gradient norm clipped to 5
(``grad_clip``), n_g = 1 and n_s = 10 (its CIFAR-10 scripts; ``main.py``'s own default is 7),
KL at temperature 1, β = 250 for AT, and the student's images not augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import frozen
from harness.backbone.devices import randn, to_host
from harness.backbone.distill import kl_divergence, rslad_loss
from harness.backbone.generator import Generator
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.errors import HarnessError
from harness.schema import param


@dataclass(frozen=True)
class Params:
    """ZSKT hyper-parameters (original CIFAR values; per-dataset defaults in ``default_params``)."""

    mode: Literal["reference", "pool"] = param(
        "reference", doc="reference (released code: n_g G steps, then n_s student steps on G(z) of that z) | "
                         "pool (version 1: rounds of G steps fill the FIFO image pool)")
    nz: int = param(256, ge=1, doc="dimension of the generator's latent z")
    width: int = param(64, ge=1, doc="generator width (the original's 64: 128 → 64 channels)")
    lr: float = param(1e-3, gt=0, doc="Adam learning rate of the generator")
    n_g: int = param(1, ge=1, doc="generator steps per z batch (per group in reference mode, per round in pool mode)")
    n_s: int = param(10, ge=1, doc="reference mode: student steps on the images of one z batch")
    grad_clip: float = param(5.0, ge=0, doc="max gradient norm of the generator (0 = no clipping)")
    attention: bool = param(False, doc="add the original's attention-transfer term to the student loss")
    beta: float = param(250.0, ge=0, doc="weight β of the attention-transfer term")
    generator_lr: Literal["student", "constant"] = param(
        "student", doc="student (released code: G's learning rate decays with the student's cosine, "
                       "lr × lr_S(t)/lr_S(0)) | constant (version 2: lr throughout)")
    output_bn: bool = param(False, key_at_default=False,
                            doc="affine BatchNorm on G's output before its Sigmoid (the original's last layer)")


def generator_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """L_G = −KL(T(x) ‖ S(x)), batch mean (docs/methods.md); G minimises it."""
    return -kl_divergence(teacher_logits, student_logits)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Channel mean of the squared activations, N×1×H×W (before normalisation)."""
    return features.pow(2).mean(dim=1, keepdim=True)


def attention_loss(student_blocks: list[torch.Tensor], teacher_blocks: list[torch.Tensor]) -> torch.Tensor:
    """Σ_blocks mean((â_S − â_T)²), â the L2-normalised flattened attention map (docs/methods.md).

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

    display = Display(color="#8c564b", order=10)

    Params = Params
    version = "3"  # 2: reference mode (no pool) is the default; 3: G's learning rate decays with the student's

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        if params.mode == "pool" and context.generator_steps < 1:
            raise HarnessError("zskt: schedule.generator_steps must be >= 1 (the generator's steps per epoch "
                               "in pool mode)")
        if params.attention:
            teacher, student = _block_count(context.teacher), _block_count(context.student)
            if not teacher or teacher != student:
                raise HarnessError(f"zskt.attention: teacher and student need the same number of attention "
                                   f"blocks (teacher {teacher}, student {student}); set attention: false")
        info, device = context.info, context.device
        self.generator = Generator(params.nz, info.channels, info.image_size, params.width,
                                   output_bn=params.output_bn).to(device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=params.lr)
        self.pool = ImagePool(context.pool_size, info, device) if params.mode == "pool" else None
        # reference mode: the current group's images and the student steps left on them
        self.group_images: torch.Tensor | None = None
        self.group_left = 0
        # the epoch's numbers, kept on the device (read once, in end_of_epoch)
        self._classes = torch.arange(info.num_classes, device=device)
        self._class_counts = torch.zeros(info.num_classes, dtype=torch.long, device=device)
        self._kl_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._generator_steps = 0
        self._generator_lr = params.lr  # the learning rate of G's latest step (history: ``generator_lr``)
        self._student_batches = 0

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

    # ------------------------------------------------------------------ generator
    def _anneal_generator_lr(self) -> float:
        """Set G's learning rate for the coming group or round (see ``generator_lr``); returns it."""
        lr = self.params.lr
        if self.params.generator_lr == "student":
            lr *= self.ctx.student_lr_scale()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._generator_lr = lr
        return lr

    def _generator_step(self, z: torch.Tensor) -> torch.Tensor:
        """One Adam step of G on L_G for ``z``; returns KL(T ‖ S) = −L_G before the step (on the device)."""
        ctx = self.ctx
        x = self.generator(z)
        loss = generator_loss(ctx.teacher(x), ctx.student(x))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.params.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.generator.parameters(), self.params.grad_clip)
        self.optimizer.step()
        return -loss.detach().float()

    def _start_group(self, batch_size: int, generator: torch.Generator) -> None:
        """Reference mode: fresh z, n_g steps of G on it, then the group's images G(z)."""
        ctx, params = self.ctx, self.params
        z = randn((batch_size, params.nz), generator=generator, device=ctx.device)
        self.generator.train()
        self._anneal_generator_lr()
        with torch.enable_grad(), frozen(ctx.student, train=True):
            for _ in range(params.n_g):
                self._kl_sum += self._generator_step(z).double()
        with torch.no_grad():
            self.group_images = self.generator(z).float()
        self.group_left = params.n_s
        self._generator_steps += params.n_g
        ctx.cost.images_synthesized += batch_size

    def synthesize(self, epoch: int) -> dict[str, float]:
        """Pool mode: the epoch's rounds. Reference mode: nothing (G steps happen in ``sample``)."""
        if self.pool is None:
            return {}
        ctx, n_g = self.ctx, self.params.n_g
        rounds = math.ceil(ctx.generator_steps / n_g)
        divergences = []  # −L_G of every step, kept on the device and read once
        self.generator.train()
        with self.student_for_synthesis(epoch):
            for _ in range(rounds):
                self._anneal_generator_lr()
                z = randn((ctx.batch_size, self.params.nz), device=ctx.device)
                for _ in range(n_g):
                    divergences.append(self._generator_step(z))
                with torch.no_grad():
                    self.pool.add(self.generator(z))
                ctx.cost.images_synthesized += len(z)
        steps = to_host(torch.stack(divergences)).double().tolist()
        return {"generator_kl": sum(steps) / len(steps), "generator_lr": self._generator_lr}

    def sampling_period_for_estimate(self) -> int:
        return 1 if self.pool is not None else self.params.n_s

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        if self.pool is not None:
            images, _ = self.pool.sample(batch_size, generator, device=self.ctx.device)
            return images, None
        if self.group_left == 0:
            self._start_group(batch_size, generator)
        elif len(self.group_images) != batch_size:
            raise HarnessError(f"zskt (reference mode): a batch of {batch_size} asked in the middle of a group "
                               f"of {len(self.group_images)} images")
        self.group_left -= 1
        return self.group_images, None

    def gallery(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Pool mode: the pool. Reference mode: G(z) of fresh z, in batches of the schedule's size
        with G in train mode (as the student's images); G's BatchNorm statistics are restored."""
        if self.pool is not None:
            return super().gallery(n, generator)
        ctx = self.ctx
        buffers = [buffer.clone() for buffer in self.generator.buffers()]
        training = self.generator.training
        self.generator.train()
        images = []
        with torch.no_grad():
            for _ in range(max(1, math.ceil(n / ctx.batch_size))):
                z = randn((ctx.batch_size, self.params.nz), generator=generator, device=ctx.device)
                images.append(self.generator(z).float())
            for buffer, saved in zip(self.generator.buffers(), buffers):
                buffer.copy_(saved)
        self.generator.train(training)
        return to_host(torch.cat(images)[:n])

    # ------------------------------------------------------------------ student
    def student_loss(self, x: torch.Tensor, x_adv: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        """RSLAD (docs/methods.md), plus β·AT on the clean images when ``attention`` is on."""
        with torch.no_grad():  # the batch's teacher classes, for ``batch_class_counts``
            self._class_counts += (teacher_logits.argmax(1)[:, None] == self._classes).sum(0)
        self._student_batches += 1
        if not self.params.attention:
            return super().student_loss(x, x_adv, teacher_logits, labels)
        student, teacher = self.ctx.student, self.ctx.teacher
        clean_logits, student_blocks = student.forward_blocks(x)
        with torch.no_grad():
            _, teacher_blocks = teacher.forward_blocks(x)
        self.ctx.cost.teacher_forward_images += len(x)  # forward_blocks bypasses the teacher's hooks
        distillation = rslad_loss(teacher_logits, clean_logits, student(x_adv), reduction=self.ctx.kl_reduction)
        return distillation + self.params.beta * attention_loss(student_blocks, teacher_blocks)

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's ``batch_class_counts`` (and, in reference mode, ``generator_steps`` and
        ``generator_kl``), read from the device in one transfer; the counters restart."""
        numbers = to_host(torch.cat([self._class_counts.double(), self._kl_sum.reshape(1)])).tolist()
        line: dict[str, Any] = {}
        if self.pool is None:
            line["generator_steps"] = self._generator_steps
            if self._generator_steps:
                line["generator_kl"] = numbers[-1] / self._generator_steps
                line["generator_lr"] = self._generator_lr
        if self._student_batches:
            line["batch_class_counts"] = [int(count) for count in numbers[:-1]]
        self._class_counts.zero_()
        self._kl_sum.zero_()
        self._generator_steps = self._student_batches = 0
        return line

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.pool is not None:
            state["pool"] = self.pool.state_dict()
        else:  # the group under way (an empty batch when none is)
            info = self.ctx.info
            empty = torch.empty(0, info.channels, info.image_size, info.image_size)
            state["group_images"] = self.group_images if self.group_left else empty
            state["group_left"] = self.group_left
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.pool is not None:
            self.pool.load_state_dict(state["pool"])
        else:
            self.group_left = int(state["group_left"])
            images = state["group_images"]
            self.group_images = images.to(self.ctx.device, torch.float32) if self.group_left else None

