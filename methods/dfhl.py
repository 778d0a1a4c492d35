"""DFHL: data-free hard-label robustness stealing (Yuan et al., AAAI 2024) — a native DFRD method (docs/methods.md).

The teacher T is a *hard-label oracle*: the student S (the "clone") only ever sees argmax T(·),
never T's probabilities or logits. References below are to the released code (LetheSec/DFHL-RS-Attack).
Per epoch:

1. Generation (``synthesize``). A generator G, kept across epochs (never re-initialised), runs
   ``rounds`` rounds; each draws a fresh z ~ N(0, I) (dim ``nz`` 256) and uniform labels y, and takes
   N_G (``n_g``) Adam steps on (G, z) — lr_G on G, lr_z on z, betas (0.5, 0.999), a fresh Adam each
   round as in the released code (train.py ``data_generation``) — minimising

       L_G = KL(smooth(y) ‖ S(aug(G(z)))) + λ·Σ_c p̄_c log p̄_c,      p̄ = (1/N) Σ_i S(aug(G(z)))_i,

   with aug the standard view (random crop, pad size/8, + the dataset's natural flip; CMI's
   ``global_view``), smooth(y) label smoothing — 1 − s on y and s/(C − 1) on every other class, the
   released code's definition, so the target keeps exactly 1 − s — and λ = 3 (``balance``). The
   second term is −H(p̄): minimising it spreads the student's batch-mean prediction over the classes
   (the balance term). Only the *student* appears in L_G: generation costs no teacher query.
   The best iterate of the round (lowest L_G) goes to the image pool with the teacher's hard labels
   argmax T(x) — one query per image — and *not* with the sampled y: y only steers G through the
   student, which is wrong early on, so y is a prompt, not a label; the label the student must learn
   is T's decision (docs/methods.md: "the student sees only argmax T(·)"; the released code stores
   ``target_model(best_fake).topk(1)`` too). The history reports how often they agree
   (``gen_label_agreement``).

   Log base of the balance term. docs/methods.md, transcribing the paper, writes it with an
   unqualified ``log``, which this plugin reads as the natural log; the released code computes it
   with ``torch.log10`` (losses.py ``div_loss``). Since log10 p = ln p / ln 10,

       λ·Σ_c p̄_c log10 p̄_c = (λ / ln 10)·Σ_c p̄_c ln p̄_c,

   so the code's λ = 3 in log10 acts as λ = 3 / ln 10 ≈ 1.30 in natural log: the two bases are the
   same loss with a different weight of the balance term against the KL term (tested). The natural
   log is the default (docs/methods.md: where paper and code disagree, the paper's form is the default);
   ``balance_log10: true`` restores the code; it equals ``balance`` = 3 / ln 10 (≈ 1.3029)
   with the natural log.

2. Student steps (the shared trainer, T_s per epoch). ``sample`` draws pool images with the
   standard augmentation and returns them with their stored hard labels; the trainer queries T on
   them. ``adversarial`` builds high-entropy examples (HEEs): a strong augmentation of the batch
   (random resized crop keeping 95–100 % of each side, a random flip — horizontal, and vertical as
   in the released code (``vflip``) — only on datasets with natural flips, rotation by an angle
   drawn from {−15°, 0°, +15°} (zeros fill the corners), gaussian noise σ 0.001, clamp [0, 1]),
   then ``hee_steps`` = 10 steps of entropy *ascent* on the student (eval mode, parameters frozen):

       x ← clamp(x + η·sign(∇ₓ H(S(x))), 0, 1),     H(p) = −Σ_c p_c log p_c,

   with **no ε projection**: HEEs are queries near the student's decision boundaries, not
   ε-bounded attacks (they move up to hee_steps·η in L∞ from their start). The released code
   (query_sample.py ``generate_hee``) takes the same signed step and clamps to [0, 1] only, while
   its AE/UE query modes do project onto the ε-ball.

   The step η. By default η = ``hee_step_size`` = 0.03, an absolute step in pixel units [0, 1]: the
   released code's ``--lr_hee 0.03`` is a constant independent of its ``--epsilon`` (8/255, used by
   the AE/UE modes only), and an HEE is not bounded by ε, so the reference gives no reason to tie η
   to ε — the default stays absolute and equal to the reference on every dataset. η = 0.03 was
   chosen with CIFAR's ε = 8/255 in mind, though; ``hee_step_relative`` = r sets η = r·ε instead
   (ε the run's threat ε, ``ctx.epsilon``), for a dataset or threat model with another ε:
   r = 0.03 / (8/255) = 0.95625 reproduces 0.03 at ε = 8/255 and scales the step with ε elsewhere
   (e.g. η = 0.095625 at Fashion-MNIST's ε = 0.1). When set it replaces ``hee_step_size``.

   ``student_loss`` queries T for the HEEs' hard labels and trains S by cross-entropy against hard
   labels only:

       L_S = (1 − w)·CE(S(x_hee), argmax T(x_hee)) + w·CE(S(x), argmax T(x)),    w = ``clean_weight`` = 1/2.

   The clean term uses the argmax of the logits the trainer computed on exactly the batch x (the
   stored pool label belongs to the un-augmented image; a crop or flip can change T's decision).
   Nothing else of ``teacher_logits`` is used, so L_S is unchanged by any change of T's outputs that
   keeps their argmax (tested).

Student modes. As in the released code, the student is in eval mode during generation
(train.py: ``clone_model.eval()`` in ``data_generation``) and during the entropy ascent
(query_sample.py: ``model.eval()`` … ``model.train()``), and in train mode for the loss of the
student step (``clone_model.train()`` in ``train_clone_model``). In the first epoch the generator
therefore sees a freshly initialised student in eval mode (BatchNorm running statistics at their
initial values) in both.

Schedule. The student optimiser is the shared one: SGD lr 0.1, momentum 0.9 (the released code's
values too), cosine from lr to the floor ``lr_min``. DFHL's own values differ from the shared
defaults in three settings, which the class declares as its schedule defaults (``schedule_defaults``,
applied where an experiment file does not set them): ``weight_decay: 1e-4`` (train.py
``--weight_decay`` default), ``lr_min: 2e-4`` (train.py: ``CosineAnnealingLR(..., eta_min=2e-4)``)
and ``lr_schedule: epochs`` (that scheduler has T_max = epochs and steps once per epoch).
The released code's remaining schedule — batch 256 (CIFAR-10) / 512 (CIFAR-100), 300 epochs of
N_C = 500 clone steps, no generation-only warm-up — is the experiment's shared budget here, set
per experiment file for all methods alike.

T_g. DFHL's generation budget per epoch is its own N_G: the released code runs one round of N_G
steps per epoch, so ``rounds`` defaults to 1 and the schedule's T_g (``generator_steps``) is not
used (like Fast). ``rounds: 0`` instead derives ⌈T_g / N_G⌉ rounds from the schedule — the shared
generator budget, at the price of adding that many batches to the pool every epoch.

Per-dataset defaults (``default_params``): CIFAR-10 the paper's values above; CIFAR-100 (and
Tiny-ImageNet, which the paper does not cover) N_G 15, lr_G 5e-3, lr_z 1.5e-2, smoothing 0.02 (the
released README's CIFAR-100 command); Fashion-MNIST the CIFAR-10 values (10 generator steps per
epoch and a 10-step HEE cost about what the baselines' 10-step KL-PGD does, already a CPU budget;
η stays the absolute 0.03); the test-only ``synthetic`` dataset N_G 2 and 2 HEE steps.

Differences from the released code, on purpose or from the shared harness:
- it selects the final clone on *test* robust accuracy (``best_robust_checkpoint``); we never do:
  the shared trainer always keeps and evaluates the last epoch;
- its balance term uses log10, i.e. λ_eff = 3 / ln 10 ≈ 1.30 in natural log (above); the natural
  log is the default and ``balance_log10: true`` restores the code;
- its clone loss is the HEE term alone; docs/methods.md trains on the pool batch *and* the HEEs, here
  their mean; ``clean_weight: 0`` restores the code. The shared trainer queries T on the pool batch
  every step as well, so a step costs 2 × batch teacher queries (the code: 1 ×, the HEEs only);
- the shared warm-up epochs, when an experiment sets them, precede student training (the code
  trains the clone from the first epoch);
- its strong augmentation (dataset.py ``strong_aug``) draws one crop/flip/rotation per *batch*
  (python ``random``), centre-crops to an integer side (30–32 px of 32) resized bilinearly, adds
  the noise *before* the flips and the rotation, and rotates with nearest-neighbour interpolation;
  ours draws per image at a random crop position from the trainer's seeded CPU generator, makes
  crop, flips and rotation one bilinear resampling and adds the noise after it. The code's second
  0.001 start noise of the HEE loop is left out (one σ 0.001 noise, docs/methods.md). Its entropy is the
  batch mean, ours the batch sum: the same signed step;
- its pool (memory bank) keeps every batch in float32 and is read by a shuffled loader (each image
  once per pass); ours is bounded by ``schedule.pool_size`` (FIFO; set it to epochs × batch size or
  more to keep everything), stored in float16, and sampled with replacement;
- the student's parameters are frozen during generation and the entropy ascent (the code computes
  parameter gradients in generation and discards them at the next ``zero_grad``; its entropy
  ascent takes gradients with respect to the input only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks import attack_mode
from harness.backbone.best_iterate import BestIterate
from harness.backbone.devices import rand, randint, randn, to_host
from harness.backbone.generator import Generator
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.backbone.pool import ImagePool
from harness.backbone.synthesis import ADAM_BETAS, global_view
from harness.schema import param


@dataclass(frozen=True)
class Params:
    """DFHL hyper-parameters; defaults are the paper's / released code's CIFAR-10 values."""

    nz: int = param(256, ge=1, doc="latent dimension of the generator")
    n_g: int = param(10, ge=1, doc="N_G: generator steps per round")
    rounds: int = param(1, ge=0, doc="generation rounds per epoch (fresh z, y each); 0 = ⌈T_g / N_G⌉")
    lr_g: float = param(2e-3, gt=0, doc="Adam lr of the generator (betas 0.5, 0.999)")
    lr_z: float = param(1e-2, gt=0, doc="Adam lr of the latent codes z")
    smoothing: float = param(0.2, ge=0, lt=1, doc="label smoothing s of y: 1 − s on y, s/(C − 1) elsewhere")
    balance: float = param(3.0, ge=0, doc="λ of the balance term Σ_c p̄_c log p̄_c")
    balance_log10: bool = param(False, doc="balance term in log10 as in the released code, i.e. weight "
                                           "λ/ln 10 in natural log (docs/methods.md: natural log)")
    hee_steps: int = param(10, ge=0, doc="entropy-ascent steps of the high-entropy examples")
    hee_step_size: float = param(0.03, gt=0, doc="η: absolute signed step of the entropy ascent, pixel units "
                                                 "(no ε projection); replaced by hee_step_relative when set")
    hee_step_relative: float | None = param(
        None, gt=0, key_at_default=False,
        doc="η = r·ε (ε the run's threat ε) instead of hee_step_size; 0.95625 = 0.03/(8/255) matches the "
            "reference at ε = 8/255; None: the absolute hee_step_size (the reference)")
    crop_min: float = param(0.95, gt=0, le=1, doc="strong augmentation: smallest kept fraction of each side")
    rotation: float = param(15.0, ge=0, le=180, doc="strong augmentation: angle r in degrees, drawn from {−r, 0, r}")
    noise: float = param(0.001, ge=0, doc="strong augmentation: std of the gaussian noise")
    vflip: bool = param(True, doc="strong augmentation also flips vertically (only where flips are natural)")
    clean_weight: float = param(0.5, ge=0, le=1,
                                doc="w: L_S = (1 − w)·CE on HEEs + w·CE on the pool batch; 0 = released code")


# --------------------------------------------------------------------------- losses
def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Targets with 1 − s on ``labels`` and s/(C − 1) on every other class (rows sum to 1)."""
    targets = torch.full((len(labels), num_classes), smoothing / (num_classes - 1), device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing)


def smoothed_kl(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(targets ‖ softmax(student_logits)) = Σ_c t_c (log t_c − log S_c)."""
    log_student = F.log_softmax(student_logits, dim=1)
    return (torch.special.xlogy(targets, targets) - targets * log_student).sum(dim=1).mean()


def balance_term(student_logits: torch.Tensor, log10: bool = False) -> torch.Tensor:
    """Σ_c p̄_c log p̄_c = −H(p̄), p̄ the batch-mean softmax; minimal when p̄ is uniform.

    Computed from log p̄ = logsumexp_i log S_i − log N: when a saturated student gives a class
    p̄_c = 0 in float32, that class adds 0 with a zero gradient (p log p on p̄ itself has a NaN
    gradient there, which once turned a whole generator into NaN).
    ``log10``: the released code's base, Σ_c p̄_c log10 p̄_c = (Σ_c p̄_c ln p̄_c) / ln 10.
    """
    log_mean = torch.logsumexp(F.log_softmax(student_logits, dim=1), dim=0) - math.log(len(student_logits))
    value = (log_mean.exp() * log_mean).sum()
    return value / math.log(10) if log10 else value


def generator_loss(student_logits: torch.Tensor, targets: torch.Tensor, *, balance: float,
                   log10: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_G = KL(smooth(y) ‖ S) + λ·Σ_c p̄_c log p̄_c; returns (L_G, KL term, balance term)."""
    kl = smoothed_kl(student_logits, targets)
    spread = balance_term(student_logits, log10)
    return kl + balance * spread, kl, spread


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy H(softmax(logits)) = −Σ_c p_c log p_c (natural log)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def hard_label_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CE(S, argmax T): the teacher enters through its decision only."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))


# --------------------------------------------------------------------------- high-entropy examples
def strong_augment(x: torch.Tensor, generator: torch.Generator, *, crop_min: float = 0.95, rotation: float = 15.0,
                   noise: float = 0.001, hflip: bool = True, vflip: bool = True) -> torch.Tensor:
    """DFHL's strong augmentation, drawn per image from the CPU ``generator``.

    A crop keeping a fraction in [crop_min, 1] of each side at a random position, resized back
    (bilinear); flips (horizontal if ``hflip``, vertical if ``hflip and vflip``, each with prob. ½);
    rotation by an angle from {−rotation, 0, +rotation} degrees (zeros outside the image) — one
    affine resampling; then gaussian noise of std ``noise`` and a clamp to [0, 1].
    """
    n = len(x)  # every draw below is a CPU draw (harness.backbone.devices); theta moves to x's device once

    def uniform(low: float, high: float) -> torch.Tensor:
        return rand(n, generator=generator) * (high - low) + low

    def coin() -> torch.Tensor:
        return torch.where(rand(n, generator=generator) < 0.5, -1.0, 1.0)

    width, height = uniform(crop_min, 1.0), uniform(crop_min, 1.0)  # fractions of the sides
    centre_x = (2 * rand(n, generator=generator) - 1) * (1 - width)  # normalised coordinates
    centre_y = (2 * rand(n, generator=generator) - 1) * (1 - height)
    mirror_x = coin() if hflip else torch.ones(n)
    mirror_y = coin() if hflip and vflip else torch.ones(n)
    angle = torch.deg2rad((randint(0, 3, n, generator=generator) - 1) * rotation)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([width * mirror_x * cos, -width * mirror_x * sin, centre_x], dim=1),
        torch.stack([height * mirror_y * sin, height * mirror_y * cos, centre_y], dim=1),
    ], dim=1)  # input = crop(flip(rotate(output))): the composite maps output to input coordinates
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if noise > 0:
        out = out + noise * randn(x.shape, generator=generator, device=x.device).to(x.dtype)
    return out.clamp(0.0, 1.0)


def high_entropy_examples(student: nn.Module, x: torch.Tensor, *, steps: int, step_size: float) -> torch.Tensor:
    """``steps`` signed ascent steps on the student's entropy, clamped to [0, 1], no ε-ball.

    The student runs in eval mode with frozen parameters (restored afterwards).
    """
    x_hee = x.detach().clone()
    with attack_mode(student):
        for _ in range(steps):
            x_hee.requires_grad_(True)
            (grad,) = torch.autograd.grad(entropy(student(x_hee)).sum(), x_hee)
            x_hee = (x_hee.detach() + step_size * grad.sign()).clamp(0.0, 1.0)
    return x_hee.detach()


def hee_step(params: Params, epsilon: float) -> float:
    """η of the entropy ascent: ``hee_step_relative``·ε when set, else the absolute ``hee_step_size``."""
    if params.hee_step_relative is not None:
        return params.hee_step_relative * epsilon
    return params.hee_step_size


# --------------------------------------------------------------------------- the method
@register_method("dfhl")
class DFHL(Method):
    """Hard-label data-free robustness stealing: balanced generation from the student, HEE queries."""

    display = Display(color="#1f77b4", order=50)

    # the released code's schedule where it differs from the shared defaults (train.py: --weight_decay 1e-4,
    # CosineAnnealingLR eta_min=2e-4); lr 0.1 and momentum 0.9 are the shared values already
    schedule_defaults: ClassVar[dict[str, Any]] = {"weight_decay": 1e-4, "lr_min": 2e-4, "lr_schedule": "epochs"}
    version = "1"
    Params = Params

    @classmethod
    def default_params(cls, dataset: str) -> Params:
        """CIFAR-10 values; CIFAR-100 / Tiny-ImageNet N_G 15, lr_G 5e-3, lr_z 1.5e-2, s 0.02;
        Fashion-MNIST as CIFAR-10; ``synthetic`` (tests) N_G 2 and 2 HEE steps."""
        if dataset in ("cifar100", "tinyimagenet"):
            return Params(n_g=15, lr_g=5e-3, lr_z=1.5e-2, smoothing=0.02)
        if dataset == "synthetic":
            return Params(n_g=2, hee_steps=2)
        return Params()

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        info = context.info
        self.generator = Generator(params.nz, info.channels, info.image_size).to(context.device)
        self.pool = ImagePool(context.pool_size, info, context.device)
        self._diagnostics: dict[str, list[torch.Tensor]] = {}

    # ------------------------------------------------------------------ generation
    def _round(self) -> dict[str, torch.Tensor]:
        """One round: N_G Adam steps on (G, z) for L_G; the best iterate enters the pool with T's hard labels.

        Its numbers stay on the device (``synthesize`` reads every round's at once)."""
        ctx, p = self.ctx, self.params
        n, num_classes = ctx.batch_size, ctx.info.num_classes
        z = randn((n, p.nz), device=ctx.device).requires_grad_(True)
        y = randint(0, num_classes, (n,), device=ctx.device)
        targets = smooth_one_hot(y, num_classes, p.smoothing)
        optimizer = torch.optim.Adam([{"params": self.generator.parameters()}, {"params": [z], "lr": p.lr_z}],
                                     lr=p.lr_g, betas=ADAM_BETAS)
        best = BestIterate()
        for _ in range(p.n_g):
            x = self.generator(z)
            loss, kl, spread = generator_loss(ctx.student(global_view(x, ctx.info)), targets, balance=p.balance,
                                              log10=p.balance_log10)
            best.update(loss, {"kl": kl, "balance": spread}, images=x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        images = best["images"]
        with torch.no_grad():
            hard_labels = ctx.teacher(images).argmax(dim=1)  # the only teacher query of generation
        self.pool.add(images, hard_labels)
        ctx.cost.images_synthesized += n
        agreement = (hard_labels == y).float().mean()
        loss, kl, spread = best["numbers"]
        return {"gen_loss": loss, "gen_kl": kl, "gen_balance": spread, "gen_label_agreement": agreement}

    def synthesize(self, epoch: int) -> dict[str, float]:
        ctx, p = self.ctx, self.params
        rounds = p.rounds or max(1, math.ceil(ctx.generator_steps / p.n_g))
        self.generator.train()
        with self.student_for_synthesis(epoch):
            logs = [self._round() for _ in range(rounds)]
        keys = list(logs[0])
        values = to_host(torch.stack([torch.stack([log[key].float() for key in keys]) for log in logs])).double()
        return {key: sum(row[i].item() for row in values) / rounds for i, key in enumerate(keys)}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool images (random crop + natural flip) and their stored hard labels argmax T(image)."""
        return self.pool.sample(batch_size, generator, self.ctx.device)

    # ------------------------------------------------------------------ student steps
    def adversarial(self, x: torch.Tensor, teacher_logits: torch.Tensor, generator: torch.Generator,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """HEEs: entropy ascent on the student from a strong augmentation of ``x`` (no ε projection),
        step η = ``hee_step(params, ctx.epsilon)``."""
        p = self.params
        start = strong_augment(x, generator, crop_min=p.crop_min, rotation=p.rotation, noise=p.noise,
                               hflip=self.ctx.info.hflip, vflip=p.vflip)
        return high_entropy_examples(self.ctx.student, start, steps=p.hee_steps,
                                     step_size=hee_step(p, self.ctx.epsilon))

    def student_loss(self, x: torch.Tensor, x_adv: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        """(1 − w)·CE(S(x_hee), argmax T(x_hee)) + w·CE(S(x), argmax T(x)); T's hard labels only."""
        student, w = self.ctx.student, self.params.clean_weight
        with torch.no_grad():
            hee_teacher = self.ctx.teacher(x_adv)  # hard-label queries of the HEEs (counted by the cost hooks)
        loss = x.new_zeros(())
        if w < 1:
            hee_logits = student(x_adv)
            loss = loss + (1 - w) * hard_label_ce(hee_logits, hee_teacher)
            self._record("hee_entropy", entropy(hee_logits.detach()).mean())
        if w > 0:
            loss = loss + w * hard_label_ce(student(x), teacher_logits)
        self._record("hee_label_change", (hee_teacher.argmax(1) != teacher_logits.argmax(1)).float().mean())
        return loss

    def _record(self, name: str, value: torch.Tensor) -> None:
        """Keep a per-step diagnostic on the device; ``end_of_epoch`` reads them all at once."""
        self._diagnostics.setdefault(name, []).append(value.detach().float())

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's mean HEE diagnostics: student entropy on HEEs and how often T's label differs from x's."""
        line = {}
        for name, values in self._diagnostics.items():
            steps = to_host(torch.stack(values)).double().tolist()
            line[name] = sum(steps) / len(steps)
        self._diagnostics = {}
        return line

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.pool.load_state_dict(state["pool"])
