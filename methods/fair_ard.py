"""Fair-ARD (Yue et al., NeurIPS 2023): the data-based robust-fairness reference (docs/methods.md).

Unlike every other method of the harness, Fair-ARD distils *with the teacher's training set*
(``needs_train_data``): each student step takes a batch of real training images x with labels y,
makes x̃ by CE-PGD-K on the student (K = the threat's ``train_steps``, 10 by default; uniform
random start in the ε-ball), and minimises the class-weighted ARD loss

    L = (1/C) Σ_c (1/n_c) Σ_{j: y_j = c} ω_c · ℓ_j,
    ℓ_j = α τ² KL(T^τ(x_j) ‖ S^τ(x̃_j)) + (1 − α) CE(S(x_j), y_j)        (ARD, τ = 30, α = 1)

or, for ``fair-rslad``, ℓ_j = 5/6 KL(T(x_j) ‖ S(x̃_j)) + 1/6 KL(T(x_j) ‖ S(x_j)) (RSLAD). KL is
written teacher-first as everywhere in the harness (docs/methods.md's "KL(S^τ(x̃) ‖ T^τ(x))" names
PyTorch's argument order of the same divergence). ARD's CE term takes the untempered student
logits, as in ARD's paper and code (docs/methods.md writes S^τ; moot at the default α = 1). On a
batch, Σ_c (1/n_c) Σ_j over the training set is estimated by the batch mean of ω_{y_j}·ℓ_j —
identical in expectation on class-balanced training sets (CIFAR, Fashion-MNIST).

Class weights. The difficulty of class c is κ_c, the mean over the class's examples of the
least PGD steps d(x, y) = min{t ∈ [0, K] : S(x̃^(t)) ≠ y} (K when never misclassified; the
paper's definition), taken from the training attack itself over one epoch. The released code
instead counts the iterates x̃^(0..K−1) the student still classifies correctly (``kappa:
correct_iterates``): the same number unless an example flips back to correct after a first
misclassification; ω_c = κ_c^−β (β = 2; ``lps_weights`` of FERD's
Table 6, the same function) normalised to mean 1, optionally clamped to [5/6, 5/2] as the
released code does (``clamp``). The weights of epoch e come from epoch e − 1; epoch 1 is
uniform. β = 0 gives plain ARD / RSLAD (presets ``ard`` and ``rslad``).

Budget. The student is trained by the shared schedule (SGD with momentum 0.9, weight decay
5e-4, cosine decay, ``epochs × student_steps`` batches; harness) so that the reference row
spends the same student steps, on the same optimiser, as the data-free methods. The released
code's schedule is not available in the harness: SGD with Nesterov momentum and weight decay
2e-4, lr 0.1 for 100 epochs and 0.01 after (its ``adjust_learning_rate`` multiplies the *initial*
lr by 0.1 at each milestone, so the printed ÷10 at 150 sets 0.01 again). Each harness epoch walks
a fresh random permutation of the training set (another when it runs out), with the random crop
(padding size/8) and the dataset's natural flip.

Released-code switches (defaults: the paper where it says, else the harness's protocol):
- ``kappa``: ``least_steps`` (the paper's LPS) | ``correct_iterates`` (the code's count, above);
- ``attack_bn``: ``eval`` (harness: the training attack runs the student in eval mode, as
  every other method's does — the papers do not say) | ``train``: ARD's and Fair-ARD's code call
  ``net.train()`` before the attack, so its K forwards use the batch's BatchNorm statistics and
  update the running ones with every iterate;
- the schedule's ``kl_reduction``: ``batchmean`` (KL summed over classes, the harness's scale for
  every method) | ``mean``: the code's ``nn.KLDivLoss()``, the mean over batch × classes = KL / C
  (the KL terms of ℓ_j divided by C; ARD's CE term is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from harness.attacks import cross_entropy_loss, frozen, pgd
from harness.backbone.class_weights import class_means, least_pgd_steps, lps_weights
from harness.backbone.devices import place, to_host
from harness.backbone.distill import kl_divergence, kl_reduction_scale
from harness.backbone.method import Display, Method, MethodContext, register_method
from harness.data import augment_batch
from harness.schema import param

CLAMP_RANGE = (5 / 6, 5 / 2)  # the released code's bounds on the normalised weights
RSLAD_WEIGHTS = (5 / 6, 1 / 6)  # adversarial, clean


@dataclass(frozen=True)
class Params:
    """Fair-ARD hyper-parameters (docs/methods.md)."""

    loss: str = param("ard", choices=("ard", "rslad"), doc="ARD's tempered KL, or RSLAD's 5/6–1/6 KL (Fair-RSLAD)")
    beta: float = param(2.0, ge=0, doc="ω_c = κ_c^−β; 0 = unweighted (ARD / RSLAD)")
    tau: float = param(30.0, gt=0, doc="ARD temperature τ")
    alpha: float = param(1.0, ge=0, le=1, doc="ARD weight of the KL term; 1 − α on CE(S(x), y)")
    clamp: bool = param(False, doc="clamp the normalised weights to [5/6, 5/2] (released code)")
    kappa: Literal["least_steps", "correct_iterates"] = param(
        "least_steps", key_at_default=False,
        doc="least_steps (paper: first misclassifying PGD step, K if none) | correct_iterates (released code: "
            "iterates of the K still classified correctly)")
    attack_bn: Literal["eval", "train"] = param(
        "eval", key_at_default=False,
        doc="the student's BatchNorm in the training attack: eval (harness) | train (released code)")


# --------------------------------------------------------------------------- losses
def ard_loss_per_sample(teacher_logits: torch.Tensor, student_adv: torch.Tensor, student_clean: torch.Tensor,
                        labels: torch.Tensor, *, tau: float, alpha: float, kl_scale: float = 1.0) -> torch.Tensor:
    """ℓ_j = α τ² KL(T^τ(x) ‖ S^τ(x̃)) + (1 − α) CE(S(x), y), per sample (ARD); the KL times
    ``kl_scale`` (1/C: the released code's mean over classes)."""
    kl = kl_scale * kl_divergence(teacher_logits.detach() / tau, student_adv / tau, reduction="none")
    loss = alpha * tau**2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_clean, labels, reduction="none")
    return loss


def rslad_loss_per_sample(teacher_logits: torch.Tensor, student_adv: torch.Tensor,
                          student_clean: torch.Tensor, *, kl_scale: float = 1.0) -> torch.Tensor:
    """ℓ_j = 5/6 KL(T(x) ‖ S(x̃)) + 1/6 KL(T(x) ‖ S(x)), per sample (RSLAD), times ``kl_scale``."""
    target = teacher_logits.detach()
    return kl_scale * (RSLAD_WEIGHTS[0] * kl_divergence(target, student_adv, reduction="none")
            + RSLAD_WEIGHTS[1] * kl_divergence(target, student_clean, reduction="none"))


def class_weights_from_lps(kappa: torch.Tensor, beta: float, steps: int, clamp: bool) -> torch.Tensor:
    """ω_c = κ_c^−β normalised to mean 1, then clamped to [5/6, 5/2] if ``clamp`` (§7)."""
    weights = lps_weights(kappa, "power", steps, beta) * len(kappa)
    return weights.clamp(*CLAMP_RANGE) if clamp else weights


def weighted_mean(per_sample: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The batch estimate of (1/C) Σ_c (1/n_c) Σ_j ω_c ℓ_j: mean of ω_{y_j} ℓ_j."""
    return (place(weights, per_sample.device).to(per_sample.dtype)[labels] * per_sample).mean()


def pgd_with_lps(student: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, epsilon: float,
                 step_size: float, steps: int, generator: torch.Generator | None = None,
                 kappa: str = "least_steps", batchnorm: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """CE-PGD-K on the student (random start) and each example's difficulty count.

    The objective records whether each iterate x̃^(0..K−1) is misclassified. ``least_steps``: the
    first misclassified one, K if none (a first flip at x̃^(K) would count K like no flip, so the
    last iterate needs no extra forward pass); ``correct_iterates``: how many of the K are correct.
    ``batchnorm``: the student's BatchNorm mode during the attack (``train`` updates its running
    statistics at every iterate, as the released code does).
    """
    wrong: list[torch.Tensor] = []

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wrong.append(logits.detach().argmax(1) != y)
        return cross_entropy_loss(logits, y)

    with frozen(student, train=batchnorm == "train"):
        x_adv = pgd(student, x, labels, epsilon=epsilon, step_size=step_size, steps=steps,
                    objective=objective, generator=generator)
    if kappa == "correct_iterates":
        return x_adv, (~torch.stack(wrong)).sum(0)
    wrong.append(torch.zeros_like(labels, dtype=torch.bool))
    return x_adv, least_pgd_steps(torch.stack(wrong))


# --------------------------------------------------------------------------- the method
@register_method("fair-ard", presets={"fair-rslad": {"loss": "rslad"}, "ard": {"beta": 0.0},
                                      "rslad": {"loss": "rslad", "beta": 0.0}})
class FairARD(Method):
    """Fair-ARD / Fair-RSLAD / ARD / RSLAD on the real training set (module docstring)."""

    display = Display(color="#17becf", order=70, class_weights="loss")

    Params = Params
    version = "1"
    needs_train_data = True
    synthesizes = False

    def __init__(self, params: Params, context: MethodContext) -> None:
        super().__init__(params, context)
        data = context.train_data
        if data is None:
            raise ValueError("fair-ard needs the training set in its context")
        self.images = data.images if hasattr(data, "images") else None
        self.data = data
        c = context.info.num_classes
        self.class_weights = torch.ones(c, dtype=torch.float64)
        self.lps = torch.full((c,), float(context.attack_steps), dtype=torch.float64)
        self._order, self._cursor = torch.arange(len(data)), 0  # synthesize() shuffles each epoch
        self._epoch_lps: list[torch.Tensor] = []  # (LPS, label) of every attacked example this epoch
        self._epoch_labels: list[torch.Tensor] = []

    def _batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            x = self.images[indices].float().div_(255)
            y = self.data.targets[indices]
        else:
            items = [self.data[int(i)] for i in indices]
            x = torch.stack([image for image, _ in items])
            y = torch.tensor([label for _, label in items])
        return x, y.long()

    def synthesize(self, epoch: int) -> dict[str, Any]:
        """Nothing to synthesise: start the epoch's walk through a fresh permutation."""
        self._order, self._cursor = torch.randperm(len(self.data)), 0
        return {}

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``batch_size`` training images (random crop + natural flip) and their labels."""
        if self._cursor + batch_size > len(self._order):
            self._order, self._cursor = torch.randperm(len(self.data)), 0
        indices = self._order[self._cursor:self._cursor + batch_size]
        self._cursor += batch_size
        x, y = self._batch(indices)
        x = augment_batch(place(x, self.ctx.device), self.ctx.info, generator)  # draws on the CPU generator
        return x, place(y, self.ctx.device)

    def adversarial(self, x: torch.Tensor, teacher_logits: torch.Tensor, generator: torch.Generator,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """CE-PGD-K on the student; tallies each example's least PGD steps for κ_c."""
        ctx = self.ctx
        if labels is None:
            raise ValueError("fair-ard attacks need the labels of the training batch")
        x_adv, lps = pgd_with_lps(ctx.student, x, labels, epsilon=ctx.epsilon, step_size=ctx.step_size,
                                  steps=ctx.attack_steps, generator=generator, kappa=self.params.kappa,
                                  batchnorm=self.params.attack_bn)
        self._epoch_lps.append(lps)  # on the device: end_of_epoch reads the epoch's tallies at once
        self._epoch_labels.append(labels)
        return x_adv

    def student_loss(self, x: torch.Tensor, x_adv: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        """The class-weighted ARD (or RSLAD) loss with this epoch's ω."""
        p, student = self.params, self.ctx.student
        kl_scale = kl_reduction_scale(self.ctx.kl_reduction, self.ctx.info.num_classes)
        student_adv, student_clean = student(x_adv), student(x)
        if p.loss == "ard":
            per_sample = ard_loss_per_sample(teacher_logits, student_adv, student_clean, labels,
                                             tau=p.tau, alpha=p.alpha, kl_scale=kl_scale)
        else:
            per_sample = rslad_loss_per_sample(teacher_logits, student_adv, student_clean, kl_scale=kl_scale)
        return weighted_mean(per_sample, labels, self.class_weights)

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """κ_c of this epoch's attacks → ω for the next epoch (a class unseen keeps its κ)."""
        labels = to_host(torch.cat(self._epoch_labels)) if self._epoch_labels else torch.zeros(0, dtype=torch.long)
        lps = to_host(torch.cat(self._epoch_lps)) if self._epoch_lps else torch.zeros(0)
        self.lps = class_means(lps, labels, self.lps)
        if self.params.beta > 0:
            self.class_weights = class_weights_from_lps(self.lps, self.params.beta, self.ctx.attack_steps,
                                                        self.params.clamp)
        counts = torch.bincount(labels, minlength=len(self.lps)).to(torch.float64).tolist()
        self._epoch_lps, self._epoch_labels = [], []
        return {"class_weights": self.class_weights.tolist(), "class_lps": self.lps.tolist(),
                "class_counts": counts}

    def state_dict(self) -> dict[str, Any]:
        return {"class_weights": self.class_weights, "class_lps": self.lps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.class_weights = state["class_weights"].cpu().to(torch.float64)
        self.lps = state["class_lps"].cpu().to(torch.float64)
